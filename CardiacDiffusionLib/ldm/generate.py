"""Sampling image + label pairs from a trained LDM and writing them with geometry.

Sample ``i`` of a call with seed ``S`` starts from the noise of seed ``S + i``, so a pair does not
depend on how many were asked for. Images are written in HU (Int16, inside the training window),
labels UInt8 in 0..8 (CT convention), on an identity-direction LPS grid with the model's spacing,
centred on the origin like the phantoms are centred on the heart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import InputError
from ..labels import CT_LABELS
from ..models.store import load_model
from .cleanup import clean_labels, noise_report
from .data import unit_to_hu
from .diffusion import LatentDiffusion

DEFAULT_MODEL = "ldm-ct-phantom-32"


def load_ldm(name_or_path: str = DEFAULT_MODEL, device: str | torch.device = "cpu") -> LatentDiffusion:
    """The LDM of a registered name or file, checked by the model store."""
    loaded = load_model(name_or_path, device=device)
    if not isinstance(loaded.module, LatentDiffusion):
        raise InputError(f"--model {name_or_path}: a {loaded.architecture} model; sample needs a latent diffusion "
                         "model (architecture ldm, e.g. ldm-ct-phantom-32; `models list` shows them)")  # fmt: skip
    return loaded.module


def sample_pairs(model: LatentDiffusion, n: int, seed: int = 0, steps: int = 50,
                 cleanup: bool = True) -> list[dict]:  # fmt: skip
    """``n`` dicts: hu (z, y, x float32), labels (uint8; cleaned when ``cleanup``), raw_labels, noise before/after."""
    return list(iter_pairs(model, n, seed, steps, cleanup))


def iter_pairs(model: LatentDiffusion, n: int, seed: int = 0, steps: int = 50, cleanup: bool = True,
               chunk: int = 8) -> Iterator[dict]:  # fmt: skip
    """:func:`sample_pairs` one at a time, sampled ``chunk`` at a time: memory stays that of a chunk, whatever ``n``."""
    device = model.latent_scale.device
    for first in range(seed, seed + n, chunk):
        seeds = range(first, min(first + chunk, seed + n))
        noise = torch.stack([torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        image, labels = model.sample(len(seeds), steps=steps, noise=noise.to(device))
        for i, s in enumerate(seeds):
            raw = labels[i].cpu().numpy().astype(np.uint8)
            final = clean_labels(raw) if cleanup else raw
            yield {"seed": s, "hu": unit_to_hu(image[i, 0].cpu().numpy()), "raw_labels": raw, "labels": final,
                   "noise_before": noise_report(raw), "noise_after": noise_report(final)}  # fmt: skip


def to_sitk(array: np.ndarray, spacing_mm: float, pixel: int) -> sitk.Image:
    img = sitk.Cast(sitk.GetImageFromArray(array), pixel)
    n = np.array(array.shape[::-1], float)
    img.SetSpacing((spacing_mm,) * 3)
    img.SetOrigin(tuple(float(o) for o in -0.5 * (n - 1) * spacing_mm))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img


def write_pairs(out: str | Path, pairs: Iterable[dict], spacing_mm: float, meta: dict) -> list[Path]:
    """sample_XXX_image.nii.gz / sample_XXX_labels.nii.gz per pair (written as each comes: ``pairs`` may be
    :func:`iter_pairs`) and labels.json; the written paths. Other sample files in ``out`` (an earlier run's) are
    removed."""
    from ..io.volumes import write_image

    out = Path(out)
    written, samples = [], []
    for i, pair in enumerate(pairs):
        hu = np.rint(pair["hu"]).astype(np.int16)
        written.append(write_image(to_sitk(hu, spacing_mm, sitk.sitkInt16), out / f"sample_{i:03d}_image.nii.gz"))
        written.append(write_image(to_sitk(pair["labels"], spacing_mm, sitk.sitkUInt8), out / f"sample_{i:03d}_labels.nii.gz"))
        samples.append({"index": i, "seed": pair["seed"], "noise_before_cleanup": pair["noise_before"],
                        "noise_after_cleanup": pair["noise_after"]})  # fmt: skip
    info = {"labels": {str(k): v for k, v in CT_LABELS.items()}, "background": 0, "spacing_mm": [spacing_mm] * 3,
            "samples": samples, **meta}  # fmt: skip
    (out / "labels.json").write_text(json.dumps(info, indent=2))
    for stale in [*out.glob("sample_*_image.nii.gz"), *out.glob("sample_*_labels.nii.gz")]:
        if stale not in written:  # an earlier, larger run's pairs would pass for this run's
            stale.unlink()
    return written + [out / "labels.json"]
