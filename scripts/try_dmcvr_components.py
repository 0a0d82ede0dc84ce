"""Connected-component cleanup of dmcvr's labels: does any variant help? Chosen on training data only.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/try_dmcvr_components.py --data ../shared/data/acdc --patients 41-60 \
        --phantoms 20-29 [--cache /tmp/dmcvr_components] [--variants none largest3d ...] [--out FILE] [--cache-only]

dmcvr (default settings, CPU) runs once per volume and its label volume is cached (``--cache``, npz / NIfTI); every
cleanup variant is then applied offline to the cached volume. A variant only changes generated slices, never
acquired ones (whose labels the user gave). ACDC: the gap protocol with the kept slices' labels (the volume is the
kept slices' given labels interleaved with dmcvr's labels of the dropped slices; Dice pooled over the dropped
slices, then averaged over volumes, as ``evaluate gap``). Phantoms: the LAX check of the 1 mm reconstruction
(``scripts/eval_lax_phantoms.py``; Dice per view and label, averaged over phantoms; ``rv_2ch_px``: RV pixels the
volume puts on the 2ch planes, which show no RV). Variants (``VARIANTS``): per label (LV cavity, MYO, RV) keep the
largest 3D component (26-connected) or the largest 2D component per slice, or drop 3D components under N mm^3 (or
none: ``holes`` alone); the
removed voxels become background (``bg``) or the label of the nearest kept pixel in their slice (``nn``); ``holes``
then fills background enclosed by one label in generated slices.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_lax_phantoms import seed_list  # noqa: E402

from CardiacDiffusionLib.cli.evaluate import parse_range  # noqa: E402
from CardiacDiffusionLib.labels import MR_LABELS  # noqa: E402
from CardiacDiffusionLib.metrics.overlap import dice  # noqa: E402
from CardiacDiffusionLib.utils.jsonfile import dumps  # noqa: E402

#: name: (rule, min mm^3, refill, fill holes)
VARIANTS = {
    "none": (None, 0, "bg", False),
    "largest3d-bg": ("largest3d", 0, "bg", False),
    "largest3d-nn": ("largest3d", 0, "nn", False),
    "largest3d-nn-holes": ("largest3d", 0, "nn", True),
    "holes": ("none", 0, "bg", True),
    "largest2d-nn": ("largest2d", 0, "nn", False),
    "islands100-nn": ("islands", 100, "nn", False),
    "islands500-nn": ("islands", 500, "nn", False),
    "islands2000-nn": ("islands", 2000, "nn", False),
}


def clean(labels: np.ndarray, generated: np.ndarray, spacing, rule, min_mm3=0.0, refill="bg", holes=False):
    """``labels`` (z, y, x) with components of each heart label removed in the ``generated`` slices only
    (``spacing`` (z, y, x) mm); see the module docstring for the rules."""
    if rule is None:
        return labels
    removed = np.zeros(labels.shape, bool)
    full3d = ndimage.generate_binary_structure(3, 3)
    for value in MR_LABELS if rule != "none" else ():
        mask = labels == value
        if rule == "largest2d":
            for z in np.nonzero(generated)[0]:
                comp, n = ndimage.label(mask[z], ndimage.generate_binary_structure(2, 2))
                if n > 1:
                    removed[z] |= (comp > 0) & (comp != 1 + np.argmax(np.bincount(comp.ravel())[1:]))
            continue
        comp, n = ndimage.label(mask, full3d)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        if rule == "largest3d":
            drop = np.arange(n) != np.argmax(sizes)
        else:
            drop = sizes * float(np.prod(spacing)) < min_mm3
        removed |= np.isin(comp, 1 + np.nonzero(drop)[0]) & generated[:, None, None]
    out = labels.copy()
    for z in np.nonzero(removed.any((1, 2)))[0]:
        if refill == "bg" or removed[z].all():
            out[z][removed[z]] = 0
        else:  # the label of the nearest pixel not removed, in the same slice
            iy, ix = ndimage.distance_transform_edt(removed[z], sampling=spacing[1:], return_distances=False,
                                                    return_indices=True)  # fmt: skip
            out[z] = labels[z][iy, ix]
    if holes:
        for z in np.nonzero(generated)[0]:
            for value in MR_LABELS:
                inside = ndimage.binary_fill_holes(out[z] == value) & (out[z] == 0)
                out[z][inside] = value
    return out


# ---- ACDC, gap protocol ------------------------------------------------------------------------
def acdc_cached(data: Path, patients, cache: Path) -> list[dict]:
    """Per volume: {name, labels, truth, generated, spacing}, running dmcvr where the cache lacks it."""
    from CardiacDiffusionLib.reconstruction.baselines import get_method
    from CardiacDiffusionLib.reconstruction.gap import acdc_stacks, split_kept_dropped

    out = []
    for stack in acdc_stacks(data, patients):
        kept, dropped = split_kept_dropped(stack.n)
        if len(dropped) == 0:
            continue
        file = cache / "acdc" / (Path(stack.source).stem + ".npz")
        if not file.exists():
            _, predicted = get_method("dmcvr")(stack.subset(kept), stack.positions[dropped], device="cpu")
            used = np.arange(kept[-1] + 1)
            labels = stack.labels[used].astype(np.uint8).copy()
            labels[dropped] = predicted
            generated = np.isin(used, dropped)
            spacing = (float(np.mean(stack.gaps)), float(stack.pixel_spacing[1]), float(stack.pixel_spacing[0]))
            file.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(file, labels=labels, truth=stack.labels[used].astype(np.uint8), generated=generated,
                                spacing=np.array(spacing))  # fmt: skip
            print(f"cached {file.name}", flush=True)
        with np.load(file) as f:
            out.append({"name": Path(stack.source).name, **{k: f[k] for k in f.files}})
    return out


def acdc_scores(volumes: list[dict], variant) -> list[dict]:
    rows = []
    for v in volumes:
        cleaned = clean(v["labels"], v["generated"], v["spacing"], *variant)
        g = v["generated"]
        row = {"volume": v["name"], "changed": int((cleaned != v["labels"]).sum())}
        for value, name in MR_LABELS.items():
            d = dice(cleaned[g] == value, v["truth"][g] == value)
            row[name] = None if np.isnan(d) else float(d)
        rows.append(row)
    return rows


# ---- MR phantoms, LAX check --------------------------------------------------------------------
def phantom_cached(seeds: list[int], cache: Path) -> list[dict]:
    from CardiacDiffusionLib.phantoms.scanner import make_subject
    from CardiacDiffusionLib.reconstruction.volume import reconstruct

    out = []
    for seed in seeds:
        folder = cache / "phantoms" / f"{seed:03d}"
        if not (folder / "labels.nii.gz").exists():
            subject = make_subject(seed)
            result = reconstruct(subject.sax, "dmcvr", 1.0, device="cpu")
            offsets = subject.sax.positions - subject.sax.positions[0]
            z_mm = np.arange(result.labels.GetSize()[2]) * result.spacing
            generated = np.min(np.abs(z_mm[:, None] - offsets[None, :]), 1) > 1e-3
            folder.mkdir(parents=True, exist_ok=True)
            for view, image in subject.lax_labels.items():
                sitk.WriteImage(image, str(folder / f"lax_{view}.nii.gz"))
            np.save(folder / "generated.npy", generated)
            sitk.WriteImage(result.labels, str(folder / "labels.nii.gz"))
            print(f"cached phantom {seed}", flush=True)
        lax = {p.name[4:7]: sitk.ReadImage(str(p)) for p in sorted(folder.glob("lax_*.nii.gz"))}
        out.append({"seed": seed, "labels": sitk.ReadImage(str(folder / "labels.nii.gz")), "lax": lax,
                    "generated": np.load(folder / "generated.npy")})  # fmt: skip
    return out


def phantom_scores(subjects: list[dict], variant) -> list[dict]:
    from CardiacDiffusionLib.geometry.planes import coverage_mask, resample_to
    from CardiacDiffusionLib.reconstruction.lax_check import lax_dice

    rows = []
    for s in subjects:
        array = sitk.GetArrayFromImage(s["labels"])
        spacing = s["labels"].GetSpacing()[::-1]
        cleaned = clean(array, s["generated"], spacing, *variant)
        image = sitk.GetImageFromArray(cleaned)
        image.CopyInformation(s["labels"])
        row = {"seed": s["seed"], "changed": int((cleaned != array).sum())}
        for view, lax in s["lax"].items():
            row[view] = lax_dice(image, lax)
        inside = coverage_mask(image, s["lax"]["2ch"])
        on_2ch = sitk.GetArrayFromImage(resample_to(image, s["lax"]["2ch"], labels=True))
        row["rv_2ch_px"] = int(((on_2ch == 3) & inside).sum())
        rows.append(row)
    return rows


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="ACDC-layout folder (gap protocol)")
    p.add_argument("--patients", default="41-60")
    p.add_argument("--phantoms", nargs="+", help="MR phantom seeds or ranges, e.g. 20-29 (LAX check)")
    p.add_argument("--cache", default="/tmp/dmcvr_components", help="where dmcvr's label volumes are kept")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--cache-only", action="store_true", help="run dmcvr where the cache lacks it, score nothing")
    p.add_argument("--out", help="write the JSON table here")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    cache = Path(args.cache)
    volumes = acdc_cached(Path(args.data), parse_range(args.patients), cache) if args.data else []
    subjects = phantom_cached(seed_list(args.phantoms), cache) if args.phantoms else []
    if args.cache_only:
        return
    table: dict = {"settings": {"data": args.data, "patients": args.patients if args.data else None,
                                "phantoms": args.phantoms, "variants": {k: VARIANTS[k] for k in args.variants}}}
    for name in args.variants:
        entry: dict = {}
        if volumes:
            rows = acdc_scores(volumes, VARIANTS[name])
            entry["acdc"] = {"dice": {k: mean(r[k] for r in rows) for k in MR_LABELS.values()},
                             "changed_voxels": sum(r["changed"] for r in rows), "rows": rows}  # fmt: skip
        if subjects:
            rows = phantom_scores(subjects, VARIANTS[name])
            views = sorted(rows[0]) if rows else []
            views = [v for v in views if v in ("2ch", "3ch", "4ch")]
            entry["phantoms"] = {
                "dice": {k: mean(r[v][k] for r in rows for v in views) for k in MR_LABELS.values()},
                "views": {f"{v} {k}": mean(r[v][k] for r in rows) for v in views for k in MR_LABELS.values()},
                "rv_2ch_px": sum(r["rv_2ch_px"] for r in rows), "changed_voxels": sum(r["changed"] for r in rows),
                "rows": rows}  # fmt: skip
        table[name] = entry
        summary = {k: {"dice": e["dice"], "changed": e["changed_voxels"]} for k, e in entry.items()}
        print(name, dumps(summary), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(dumps(table, args.out, indent=1) + "\n")


if __name__ == "__main__":
    main()
