"""LAX check on MR phantoms: Dice of each method's 1 mm SAX reconstruction on the 2ch/3ch/4ch planes.

    .venv/bin/python scripts/eval_lax_phantoms.py [--seeds 7 8 9 | --seeds 0-19] [--methods nearest linear shape dmcvr]
        [--steps N] [--strength S] [--shape-prior W] [--out bench/lax_phantoms.json]

Each phantom subject (seeds not used in training: the shipped model saw seeds 1000-1007) is
scanned as an oblique SAX stack (10 mm gap) with 2ch/3ch/4ch LAX views; every method
reconstructs the SAX stack with its labels to 1 mm; ``dmcvr-nolabels`` gets no SAX labels (its
morphology net segments every slice). Per view and label the Dice is averaged over subjects
(``raw``: per subject, in the order of ``seeds``).

``slices`` (per subject, per method): for every generated 1 mm slice (not an acquired one) the label
areas (pixels) of the method, of shape-based interpolation and of the phantom's truth sampled at the
slice's voxel centres, and the method's Dice against that truth; ``degraded`` lists the generated slices
where LV or RV covers less than ``DEGRADED_FRACTION`` of shape's area (shape's area at least 50 pixels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CardiacDiffusionLib.labels import MR_LABELS
from CardiacDiffusionLib.phantoms.scanner import make_subject
from CardiacDiffusionLib.reconstruction.lax_check import format_table, lax_dice
from CardiacDiffusionLib.reconstruction.volume import reconstruct
from CardiacDiffusionLib.utils.jsonfile import write_json

DEGRADED_FRACTION = 0.75
MIN_AREA = 50


def seed_list(items: list[str]) -> list[int]:
    """``["0-3", "7"]`` -> [0, 1, 2, 3, 7]."""
    out: list[int] = []
    for item in items:
        a, _, b = item.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def truth_on(image: sitk.Image, phantom) -> np.ndarray:
    """The phantom's labels at the voxel centres of ``image`` (array order z, y, x)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], -1).reshape(-1, 3).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    points = np.array(image.GetOrigin()) + (index * np.array(image.GetSpacing())) @ direction.T
    return phantom.labels_at(points).reshape(size[::-1])


def slice_records(labels: np.ndarray, shape: np.ndarray, truth: np.ndarray, generated: np.ndarray) -> dict:
    """Per generated slice: areas of method / shape / truth and the method's Dice against the truth."""
    rows, degraded = [], []
    for z in np.nonzero(generated)[0]:
        row = {"z": int(z)}
        for value, name in MR_LABELS.items():
            a, s, t = (int((x[z] == value).sum()) for x in (labels, shape, truth))
            inter = int(((labels[z] == value) & (truth[z] == value)).sum())
            row[name] = {"area": a, "shape": s, "truth": t, "dice": round(2 * inter / (a + t), 4) if a + t else None}
        rows.append(row)
        if any(row[n]["shape"] >= MIN_AREA and row[n]["area"] < DEGRADED_FRACTION * row[n]["shape"] for n in ("LV", "RV")):
            degraded.append(int(z))
    return {"rows": rows, "degraded": degraded}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", default=["7", "8", "9"], help="seeds or ranges (0-19)")
    p.add_argument("--methods", nargs="+", default=["nearest", "linear", "shape", "dmcvr", "dmcvr-nolabels"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--strength", type=float, default=None)
    p.add_argument("--shape-prior", type=float, default=None)
    p.add_argument("--out", default="bench/lax_phantoms.json")
    args = p.parse_args()
    seeds = seed_list(args.seeds)
    per: dict[str, dict[str, list]] = {}
    slices: dict[str, dict[str, dict]] = {}
    for seed in seeds:
        subject = make_subject(seed)
        results = {}
        for method in args.methods:
            stack, name = subject.sax, method
            options = {"steps": args.steps, "strength": args.strength, "shape_prior": args.shape_prior, "device": "cpu"}
            options = {k: v for k, v in options.items() if v is not None} if method.startswith("dmcvr") else {}
            if method == "dmcvr-nolabels":
                stack, name = stack.with_labels(None), "dmcvr"
            results[method] = result = reconstruct(stack, name, 1.0, **options)
            for view, lax_labels in subject.lax_labels.items():
                row = lax_dice(result.labels, lax_labels)
                for label in MR_LABELS.values():
                    per.setdefault(method, {}).setdefault(f"{view} {label}", []).append(row[label])
        shape = results.get("shape") or reconstruct(subject.sax, "shape", 1.0)
        shape_labels = sitk.GetArrayFromImage(shape.labels)
        truth = truth_on(shape.labels, subject.phantom)
        z_mm = np.arange(shape_labels.shape[0]) * shape.spacing
        offsets = subject.sax.positions - subject.sax.positions[0]
        generated = np.min(np.abs(z_mm[:, None] - offsets[None, :]), 1) > 1e-3
        for method in [m for m in args.methods if m.startswith("dmcvr")]:
            labels = sitk.GetArrayFromImage(results[method].labels)
            slices.setdefault(method, {})[str(seed)] = record = slice_records(labels, shape_labels, truth, generated)
            print(f"phantom {seed} {method}: degraded generated slices {record['degraded']}", flush=True)
        print(f"phantom {seed} done: " + json.dumps({m: round(float(np.mean([v[-1] for v in per[m].values() if v[-1] is not None])), 4)
                                                   for m in args.methods}), flush=True)  # fmt: skip

    def mean(values):
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 4) if values else None

    table = {m: {k: mean(v) for k, v in cols.items()} for m, cols in per.items()}
    for m, cols in per.items():
        table[m]["mean"] = mean([x for v in cols.values() for x in v])
    rows = {f"{m} {view}": {lab: table[m][f"{view} {lab}"] for lab in MR_LABELS.values()}
            for m in table for view in ("2ch", "3ch", "4ch")}  # fmt: skip
    print(format_table(rows))
    print(json.dumps({m: table[m]["mean"] for m in table}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    settings = {"steps": args.steps, "strength": args.strength, "shape_prior": args.shape_prior}
    write_json(args.out, {"seeds": seeds, **settings, "table": table, "raw": per, "slices": slices}, indent=1)


if __name__ == "__main__":
    main()
