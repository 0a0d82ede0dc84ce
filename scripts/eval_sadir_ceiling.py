"""Registration ceiling of SADIR: the model's atlas shot onto each held-out phantom's truth by optimising v0
directly (no network), scored as the evaluation scores the network (64^3 output, 1.75 mm).

What a perfect v0 predictor could reach with this atlas, metric and deformation grid. Loss as in training
with the output-size term: SSD + (1 - soft Dice) of the 64^3 deformed atlas + reg <Lv0, v0> / voxels.

    python scripts/eval_sadir_ceiling.py --seeds 5000 5001 5002 5003 --grid 32:12:0.003 64:24:0.001
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from CardiacDiffusionLib.metrics.overlap import dice
from CardiacDiffusionLib.metrics.surface import hd95
from CardiacDiffusionLib.models.store import load_model
from CardiacDiffusionLib.sadir import data
from CardiacDiffusionLib.sadir.atlas import upsample_displacement
from CardiacDiffusionLib.sadir.epdiff import EPDiffShooting
from CardiacDiffusionLib.sadir.model import shape_fit
from CardiacDiffusionLib.sadir.train import TEST_SEED
from CardiacDiffusionLib.sadir.warp import warp
from CardiacDiffusionLib.utils.jsonfile import number_or_none, write_json
from eval_sadir import finite_mean  # this folder: scripts run as `python scripts/...`


def register(atlas: torch.Tensor, truth: torch.Tensor, grid: int, truncation: int, lr: float, iters: int, reg: float):
    """Deformed 64^3 atlas after ``iters`` Adam steps on v0 (band-limited, ``truncation``) shot on a ``grid``^3 grid."""
    shooting = EPDiffShooting((grid,) * 3, truncation=truncation)
    t = shooting.truncation
    param = torch.zeros(1, 3, t, t, t, 2, requires_grad=True)
    opt = torch.optim.Adam([param], lr=lr)

    def moved_atlas():
        v_hat = shooting.coefficients(torch.view_as_complex(param))
        disp, _ = shooting(v_hat)
        return warp(atlas, upsample_displacement(disp, atlas.shape[-1])), v_hat

    for _ in range(iters):
        moved, v_hat = moved_atlas()
        ssd, dice_soft = shape_fit(moved, truth)
        loss = ssd + 1 - dice_soft + reg * shooting.energy(v_hat).mean() / truth.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return moved_atlas()[0][0, 0].numpy() >= 0.5


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="Resources/models/sadir-myocardium.safetensors", help="whose atlas")
    p.add_argument("--seeds", type=int, nargs="+", default=[TEST_SEED + i for i in range(4)])
    p.add_argument("--grid", nargs="+", default=["32:12:0.003", "64:24:0.001"], help="GRID:TRUNCATION:ADAM_LR")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--reg", type=float, default=1e-2, help="<Lv0, v0> weight (the model's training value)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="sadir_ceiling.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    atlas = load_model(a.model).module.atlas_fine.detach()
    rows = []
    for seed in a.seeds:
        s = data.make_sample(seed, slices=8)
        truth = s["truth_fine"].astype(bool)
        spacing = s["frame"].resized(data.OUTPUT_SIZE).spacing
        slab = data.slice_slab(s["stack"], s["frame"].resized(data.OUTPUT_SIZE))  # the planes the 8 slices span
        for setting in a.grid:
            grid, truncation, lr = setting.split(":")
            start = time.time()
            pred = register(atlas, torch.from_numpy(truth.astype(np.float32))[None, None], int(grid), int(truncation),
                            float(lr), a.iters, a.reg)  # fmt: skip
            row = {"seed": seed, "grid": int(grid), "truncation": int(truncation), "lr": float(lr),
                   "dice": dice(pred, truth), "hd95_mm": number_or_none(hd95(pred, truth, (spacing,) * 3)),
                   "dice_slab": dice(pred[slab], truth[slab]), "seconds": time.time() - start}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for g in a.grid:
        of_g = [r for r in rows if f"{r['grid']}:{r['truncation']}" == ":".join(g.split(":")[:2])]
        summary[g] = {k: float(np.mean([r[k] for r in of_g])) for k in ("dice", "dice_slab")}
        summary[g].update(finite_mean([r["hd95_mm"] for r in of_g], "hd95_mm"))  # empty prediction: undefined
    write_json(a.out, {"iters": a.iters, "reg": a.reg, "model": a.model, "summary": summary, "rows": rows})
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
