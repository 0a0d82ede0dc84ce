"""Sampling image + label pairs from a trained LDM and writing them with geometry.

Sample ``i`` of a call with seed ``S`` starts from the noise of seed ``S + i``, so a pair does not
depend on how many were asked for. Images are written in HU (Int16, inside the training window),
labels UInt8 in 0..8 (CT convention), on an identity-direction LPS grid with the model's spacing,
centred on the origin like the phantoms are centred on the heart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import InputError
from ..labels import CT_LABELS
from ..models.store import load_model, model_provenance
from ..utils.device import keep_freed_memory
from ..utils.jsonfile import write_json
from .cleanup import clean_labels, noise_report
from .data import unit_to_hu
from .diffusion import LatentDiffusion

DEFAULT_MODEL = "ldm-ct-phantom-32"


def load_ldm(name_or_path: str = DEFAULT_MODEL, device: str | torch.device = "cpu", option: str = "--model",
             command: str = "sample") -> LatentDiffusion:  # fmt: skip
    """The LDM of a registered name or file, checked by the model store; another kind of model is refused
    naming ``option`` of ``command``."""
    loaded = load_model(name_or_path, device=device)
    if not isinstance(loaded.module, LatentDiffusion):
        hint = ("it is the VAE stage of `train ldm`: give the diffusion stage's model (RUN/diffusion/model.safetensors)"
                if loaded.architecture == "ldm_vae" else "`models list` shows them")  # fmt: skip
        raise InputError(f"{option} {name_or_path}: a {loaded.architecture} model; {command} needs a latent diffusion "
                         f"model (architecture ldm, e.g. {DEFAULT_MODEL}); {hint}")  # fmt: skip
    return loaded.module


def sample_pairs(model: LatentDiffusion, n: int, seed: int = 0, steps: int = 50,
                 cleanup: bool = True) -> list[dict]:  # fmt: skip
    """``n`` dicts: hu (z, y, x float32), labels (uint8; cleaned when ``cleanup``), raw_labels, noise before/after."""
    return list(iter_pairs(model, n, seed, steps, cleanup))


def check_sampling(n: int, seed: int, steps: int, timesteps: int | None = None) -> None:
    """InputError for a pair count, seed or DDIM step count that cannot be sampled (``timesteps``: the model's
    diffusion timesteps, the most DDIM steps), named as `sample`'s options."""
    if n < 1:
        raise InputError(f"--n {n}: give at least 1 pair")
    if not 0 <= seed <= 2**63 - 1 - n:  # torch seeds are 64-bit; pair i uses seed + i
        raise InputError(f"--seed {seed}: give a seed from 0 to {2**63 - 1 - n}")
    if steps < 1:
        raise InputError(f"--steps {steps}: give at least 1 DDIM step")
    if timesteps is not None and steps > timesteps:
        raise InputError(f"--steps {steps}: at most {timesteps} DDIM steps (the model's diffusion timesteps)")


def iter_pairs(model: LatentDiffusion, n: int, seed: int = 0, steps: int = 50, cleanup: bool = True,
               chunk: int = 8, progress: Callable[[float, str], None] | None = None) -> Iterator[dict]:  # fmt: skip
    """:func:`sample_pairs` one at a time, sampled ``chunk`` at a time: memory stays that of a chunk, whatever ``n``.
    ``progress(fraction of all n pairs, message)`` is called after every DDIM step. Bad counts are refused on the
    call (:func:`check_sampling`), not at the first pair."""
    check_sampling(n, seed, steps, model.scheduler.num_train_timesteps)
    return _pairs(model, n, seed, steps, cleanup, chunk, progress)


def _pairs(model, n, seed, steps, cleanup, chunk, progress) -> Iterator[dict]:
    device = model.latent_scale.device
    if device.type == "cpu":  # every DDIM step allocates the same activations: reuse them (1.10x less CPU)
        keep_freed_memory()
    for first in range(seed, seed + n, chunk):
        seeds = range(first, min(first + chunk, seed + n))
        noise = torch.stack([torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        done = first - seed
        report = None
        if progress is not None:
            def report(k: int, total: int, done: int = done, m: int = len(seeds)) -> None:
                progress((done + m * k / total) / n, f"pairs {done + 1}-{done + m} of {n}: DDIM step {k}/{total}")
        image, labels = model.sample(len(seeds), steps=steps, noise=noise.to(device), progress=report)
        for i, s in enumerate(seeds):
            raw = labels[i].cpu().numpy().astype(np.uint8)
            final = clean_labels(raw) if cleanup else raw
            yield {"seed": s, "hu": unit_to_hu(image[i, 0].cpu().numpy()), "raw_labels": raw, "labels": final,
                   "noise_before": noise_report(raw), "noise_after": noise_report(final)}  # fmt: skip


def bytes_per_pair(model: LatentDiffusion) -> int:
    """An upper bound of one written pair's size: Int16 image + UInt8 labels, uncompressed, plus headers."""
    return 3 * int(model.config["image_size"]) ** 3 + 1024


def to_sitk(array: np.ndarray, spacing_mm: float, pixel: int) -> sitk.Image:
    img = sitk.Cast(sitk.GetImageFromArray(array), pixel)
    n = np.array(array.shape[::-1], float)
    img.SetSpacing((spacing_mm,) * 3)
    img.SetOrigin(tuple(float(o) for o in -0.5 * (n - 1) * spacing_mm))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img


def pair_names(index: int) -> tuple[str, str]:
    """File names of pair ``index``: (image, labels)."""
    return f"sample_{index:03d}_image.nii.gz", f"sample_{index:03d}_labels.nii.gz"


def write_pairs(out: str | Path, pairs: Iterable[dict], spacing_mm: float, meta: dict) -> list[Path]:
    """sample_XXX_image.nii.gz / sample_XXX_labels.nii.gz per pair and labels.json; the written paths.

    Pairs are written as they come (``pairs`` may be :func:`iter_pairs`): each under temporary names, then
    renamed, and labels.json is rewritten after each, so an interrupted run (Ctrl-C) leaves whole pairs only,
    each listed in labels.json. An earlier run's sample files and labels.json in ``out`` are removed when the
    first pair is ready to be put in place; a run stopped before that leaves the folder as it was. Files there
    that no earlier run made (:func:`earlier_run`) are refused before the first pair is sampled.
    ``meta`` goes into labels.json; its ``model``, given as a name or path, is recorded as that model's
    :func:`~CardiacDiffusionLib.models.store.model_provenance` (name, version, sha256).
    """
    from ..io.volumes import write_image

    out = Path(out)
    if isinstance(meta.get("model"), (str, Path)):
        meta = {**meta, "model": model_provenance(meta["model"])}
    stale = earlier_run(out)  # before any pair is sampled (``pairs`` may be a lazy iterator)
    written, samples, temporary, placed = [], [], [], []
    info = {"labels": {str(k): v for k, v in CT_LABELS.items()}, "background": 0, "spacing_mm": [spacing_mm] * 3,
            "samples": samples, **meta}  # fmt: skip
    try:
        for i, pair in enumerate(pairs):
            hu = np.rint(pair["hu"]).astype(np.int16)
            images = (to_sitk(hu, spacing_mm, sitk.sitkInt16), to_sitk(pair["labels"], spacing_mm, sitk.sitkUInt8))
            final = [out / name for name in pair_names(i)]
            temporary = [path.with_name(f".partial_{path.name}") for path in final]
            for image, path in zip(images, temporary):
                write_image(image, path)
            if i == 0:  # an earlier run's pairs would pass for this run's
                for path in stale:
                    path.unlink(missing_ok=True)
            for path, target in zip(temporary, final):
                path.replace(target)
                placed.append(target)
            written += final
            temporary, placed = [], []
            samples.append({"index": i, "seed": pair["seed"], "noise_before_cleanup": pair["noise_before"],
                            "noise_after_cleanup": pair["noise_after"]})  # fmt: skip
            write_json(out / "labels.json", info)
    finally:  # also on Ctrl-C: the pair being written goes, whole
        for path in [*temporary, *placed]:
            path.unlink(missing_ok=True)
    if not samples:
        write_json(out / "labels.json", info)
    return written + [out / "labels.json"]


def earlier_run(out: str | Path, option: str = "--out") -> list[Path]:
    """The files of an earlier run in ``out`` (its labels.json and the pairs it lists), which a new run replaces;
    an InputError when ``out`` holds a labels.json that no run wrote or sample files it does not list: they are
    the user's (a run removed every ``sample_*`` file and any labels.json, whoever made them)."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = sorted({*out.glob("sample_*_image.nii.gz"), *out.glob("sample_*_labels.nii.gz")})
    listed: set[str] = set()
    if (out / "labels.json").exists():
        try:
            info = json.loads((out / "labels.json").read_text())
            listed = {name for s in info["samples"] for name in pair_names(int(s["index"]))}
            ours = info["labels"] == {str(k): v for k, v in CT_LABELS.items()}
        except (OSError, ValueError, TypeError, KeyError):
            ours = False
        if not ours:
            raise InputError(f"{option} {out}: holds a labels.json that no `sample` run wrote; it is kept: choose a "
                             "new or empty folder")  # fmt: skip
    foreign = [path.name for path in found if path.name not in listed]
    if foreign:
        raise InputError(f"{option} {out}: holds {len(foreign)} sample file(s) that no labels.json there lists "
                         f"(e.g. {foreign[0]}); they are kept: choose a new or empty folder, or move them")  # fmt: skip
    return [*found, *([out / "labels.json"] if (out / "labels.json").exists() else [])]
