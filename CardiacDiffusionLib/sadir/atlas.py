"""Fréchet-mean myocardium atlas by iterative geodesic-shooting registration (Joshi et al. 2004 style).

Iterative, not learned jointly with a network: it needs no training loop, is deterministic and
is built offline once (``python -m CardiacDiffusionLib.sadir.atlas --out Resources/atlas``), which
is what a shipped tool wants. It is the starting atlas of training, which then updates it alternately
with the network (``train.update_atlas``).

One round: register the current atlas to every subject by optimising each initial velocity v0
(band-limited coefficients, Adam through :class:`EPDiffShooting`; loss SSD(atlas o phi^-1, subject)
+ ``reg`` <Lv0, v0>), pull every subject back into atlas space (subject o phi), average. The
voxel-wise mean of the subjects starts it. All subjects are registered at once (one batch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..utils.jsonfile import write_json
from .epdiff import EPDiffShooting
from .warp import warp

#: band limit used for the 32^3 model grid (11 modes per axis kept)
TRUNCATION = 12


def register(
    atlas: torch.Tensor, targets: torch.Tensor, shooting: EPDiffShooting, iters: int = 40, lr: float = 0.003,
    reg: float = 1e-3,
) -> tuple[torch.Tensor, list[float]]:  # fmt: skip
    """Initial velocities (complex, (B, 3, T, T, T)) shooting ``atlas`` (1, 1, n^3) onto ``targets`` (B, 1, n^3)."""
    t = shooting.truncation
    param = torch.zeros(targets.shape[0], 3, t, t, t, 2, dtype=targets.dtype, requires_grad=True)
    opt = torch.optim.Adam([param], lr=lr)
    history = []
    for _ in range(iters):
        v = torch.view_as_complex(param)
        moved = shooting.shoot_and_warp(atlas, v)
        ssd = ((moved - targets) ** 2).sum(dim=(1, 2, 3, 4))
        loss = (ssd + reg * shooting.energy(shooting.coefficients(v))).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(ssd.detach().mean()))
    return torch.view_as_complex(param.detach()), history


def pull_back(images: torch.Tensor, v0: torch.Tensor, shooting: EPDiffShooting) -> torch.Tensor:
    """images o phi_1 (into atlas space) for the geodesics of ``v0``."""
    with torch.no_grad():
        velocities = shooting.shoot(v0)[:-1]
        return warp(images, shooting.flow(velocities, inverse=False))


def build_atlas(
    volumes: torch.Tensor, rounds: int = 3, iters: int = 40, lr: float = 0.003, reg: float = 1e-3,
    truncation: int = TRUNCATION, steps: int = 10, log=None,
) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """Fréchet-mean atlas (1, 1, n^3) of soft masks ``volumes`` (B, 1, n^3) and a record of the rounds.

    The record holds, per round, the mean SSD of the atlas to the subjects before registration
    (``ssd_to_subjects``) and after it (``ssd_registered``).
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1 or volumes.shape[0] < 2:
        raise InputError(f"atlas volumes: expected (B >= 2, 1, D, H, W), got {tuple(volumes.shape)}")
    shooting = EPDiffShooting(tuple(volumes.shape[2:]), truncation=truncation, steps=steps, dtype=volumes.dtype)
    atlas = volumes.mean(dim=0, keepdim=True)
    record = {"rounds": [], "truncation": shooting.truncation, "iters": iters, "lr": lr, "reg": reg}
    for r in range(rounds):
        start = time.time()
        before = float(((atlas - volumes) ** 2).sum(dim=(1, 2, 3, 4)).mean())
        v0, history = register(atlas, volumes, shooting, iters, lr, reg)
        atlas = pull_back(volumes, v0, shooting).mean(dim=0, keepdim=True)
        record["rounds"].append({"round": r, "ssd_to_subjects": before, "ssd_registered": history[-1],
                                 "seconds": round(time.time() - start, 1)})  # fmt: skip
        if log:
            log(record["rounds"][-1])
    record["v0"] = v0
    return atlas, record


def upsample_displacement(disp: torch.Tensor, size: int) -> torch.Tensor:
    """Displacement (voxel units) resampled trilinearly to ``size``^3, values scaled to the new voxels."""
    factor = size / disp.shape[-1]
    return F.interpolate(disp, size=(size,) * 3, mode="trilinear", align_corners=False) * factor


def save_atlas(path: str | Path, atlas: np.ndarray, info: dict) -> None:
    """``path`` (.nii.gz) holding the soft atlas in [0, 1] and ``path``.json with how it was made."""
    path = Path(path)
    import SimpleITK as sitk  # here only: training runs without SimpleITK (data.py)

    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(atlas.astype(np.float32))
    image.SetSpacing((info["spacing_mm"],) * 3)
    sitk.WriteImage(image, str(path), useCompression=True)
    write_json(str(path).replace(".nii.gz", ".json"), info)


def load_atlas(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"atlas {path}: not found; build it with python -m CardiacDiffusionLib.sadir.atlas")
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)


def main(argv=None) -> int:
    from . import data

    p = argparse.ArgumentParser(description="Build the SADIR myocardium atlas from MR phantoms.")
    p.add_argument("--out", default="Resources/atlas")
    p.add_argument("--seeds", type=int, default=24, help="phantoms 0..N-1 (ED for even, ES for odd seeds)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    samples = [data.make_sample(s) for s in range(a.seeds)]
    coarse = torch.from_numpy(np.stack([s["truth"] for s in samples]))[:, None]
    atlas, record = build_atlas(coarse, a.rounds, a.iters, log=lambda r: print(r, flush=True))
    # the 64^3 atlas: the fine truths pulled back through the same geodesics (upsampled displacements)
    shooting = EPDiffShooting((data.MODEL_SIZE,) * 3, truncation=TRUNCATION)
    with torch.no_grad():
        forward = shooting.flow(shooting.shoot(record.pop("v0"))[:-1], inverse=False)
        fine = torch.from_numpy(np.stack([s["truth_fine"] for s in samples]).astype(np.float32))[:, None]
        atlas_fine = warp(fine, upsample_displacement(forward, data.OUTPUT_SIZE)).mean(dim=0)[0]
    info = {"method": "iterative Fréchet mean by geodesic shooting (atlas.py)", "seeds": list(range(a.seeds)),
            "phases": "ED for even seeds, ES for odd", "frame": "normalised LV frame (data.py)", "fov_mm": data.FOV_MM,
            "command": "python -m CardiacDiffusionLib.sadir.atlas " + " ".join(sys.argv[1:] if argv is None else argv),
            "epdiff": {"alpha": 3, "gamma": 1, "c": 3, "steps": 10}, **record}  # fmt: skip
    for size, vol in ((data.MODEL_SIZE, atlas[0, 0]), (data.OUTPUT_SIZE, atlas_fine)):
        save_atlas(Path(a.out) / f"sadir_myocardium_{size}.nii.gz", vol.numpy(),
                   {**info, "size": size, "spacing_mm": data.FOV_MM / size})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
