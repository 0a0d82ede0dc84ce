"""How generated slices get their labels: the shape-prior weight, fixed or set by how far shape can be trusted.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/try_dmcvr_label_rules.py --data ../shared/data/acdc \
        --patients 41-60 --cache bench/label_rule_41-60 [--rules fixed:0.4 overlap:0.6 ...] [--out FILE]

Gap protocol (reconstruction/gap.py), kept slices' labels given, dmcvr at its defaults. Each volume is
decoded once; the net's class maps, the shape prior and the two acquired neighbours' labels of every
dropped slice are cached (``--cache``; a second run only re-scores), then every rule labels the same decodes:

- ``fixed:W``: (1 - W) p_net + W q, the shipped rule (W = 0.4).
- ``overlap:W``: W scaled per slice by the neighbours' agreement, the mean over the labels either holds of
  Dice(lower neighbour, upper neighbour). Shape-based interpolation fails where a structure moves between
  the kept slices (ES frames 20 mm apart: its LV Dice 0.59-0.69 on five 061-080 volumes); there the
  neighbours overlap little and the net should decide.
- ``perclass:W``: W x that label's own neighbour Dice for each label (background: the mean).
- ``gate:W:TAU``: W for a label whose neighbours agree (Dice >= TAU), else the shipped 0.4 (background: the mean).

Prints the mean Dice per label over volumes for each rule (and writes them with ``--out``).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from CardiacDiffusionLib.cli.evaluate import parse_range
from CardiacDiffusionLib.dmcvr import reconstruction as R
from CardiacDiffusionLib.dmcvr.interpolate import interpolation_plan
from CardiacDiffusionLib.labels import MR_LABELS
from CardiacDiffusionLib.metrics.overlap import dice
from CardiacDiffusionLib.reconstruction.gap import acdc_stacks, split_kept_dropped, summarise
from CardiacDiffusionLib.utils.jsonfile import write_json


def decode_once(stack, cache: Path) -> Path:
    """Run dmcvr on the kept slices, keeping what the label rule sees for each dropped slice."""
    path = cache / (Path(stack.source).stem + ".npz")
    if path.exists():
        return path
    kept, dropped = split_kept_dropped(stack.n)
    seen, acquired = [], {}
    blend, shape_labels = R.blend_with_prior, R.shape_labels

    def record_prior(labels, positions, targets, spacing):  # in dmcvr's frame (a re-described stack: turned)
        plo, phi, _ = interpolation_plan(positions, targets)
        acquired.update(lo=labels[plo].astype(np.uint8), hi=labels[phi].astype(np.uint8))
        return shape_labels(labels, positions, targets, spacing)

    def record_blend(class_maps, prior, weight):
        seen.append((class_maps.astype(np.float16), prior.astype(np.uint8)))
        return blend(class_maps, prior, weight)

    R.blend_with_prior, R.shape_labels = record_blend, record_prior
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, labels = R.dmcvr(stack.subset(kept), stack.positions[dropped], device="cpu")
    finally:
        R.blend_with_prior, R.shape_labels = blend, shape_labels
    maps, prior = (np.stack(x) for x in zip(*seen))
    lo, hi = acquired["lo"], acquired["hi"]
    np.savez_compressed(path, maps=maps, prior=prior, lo=lo, hi=hi, labels=labels, truth=stack.labels[dropped])
    return path


def neighbour_dice(lo: np.ndarray, hi: np.ndarray, classes: int) -> np.ndarray:
    """Per label c: Dice of the two neighbours' c masks (1 where neither holds c: nothing to interpolate)."""
    out = np.ones(classes)
    for c in range(1, classes):
        d = dice(lo == c, hi == c)
        out[c] = 1.0 if np.isnan(d) else d
    return out


def label(rule: str, maps: np.ndarray, prior: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    kind, *values = rule.split(":")
    w, classes = float(values[0]), maps.shape[0]
    agree = neighbour_dice(lo, hi, classes)
    held = [c for c in range(1, classes) if (lo == c).any() or (hi == c).any()]
    if kind == "fixed":
        weights = np.full(classes, w)
    elif kind == "overlap":
        weights = np.full(classes, w * (agree[held].mean() if held else 1.0))
    elif kind == "perclass":
        weights = w * agree
        weights[0] = weights[held].mean() if held else w
    elif kind == "gate":  # gate:W:TAU: W for labels whose neighbours agree (Dice >= TAU), else the shipped 0.4
        weights = np.where(agree >= float(values[1]), w, R.DEFAULT_SHAPE_PRIOR)
        weights[0] = weights[held].mean() if held else R.DEFAULT_SHAPE_PRIOR
    else:
        raise SystemExit(f"unknown rule {rule!r}")
    q = R.blend_with_prior(np.zeros_like(maps), prior, 1.0)  # the smoothed one-hot prior
    blended = (1 - weights)[:, None, None] * maps + weights[:, None, None] * q
    return blended.argmax(0)


def score(path: Path, rule: str) -> dict:
    f = np.load(path)
    labels = f["labels"].copy()
    for k in range(len(labels)):
        maps = f["maps"][k].astype(np.float32)
        inside = maps.sum(0) > 0
        labels[k][inside] = label(rule, maps, f["prior"][k], f["lo"][k], f["hi"][k])[inside]
    return {"dice": {name: dice(labels == v, f["truth"] == v) for v, name in MR_LABELS.items()},
            "psnr": None, "ssim": None}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--patients", default="41-60")
    p.add_argument("--cache", required=True, help="folder for the decodes (re-used when present)")
    p.add_argument("--rules", nargs="+", default=["fixed:0", "fixed:0.2", "fixed:0.4", "fixed:0.6", "overlap:0.4",
                   "overlap:0.5", "overlap:0.6", "overlap:0.8", "perclass:0.5", "perclass:0.6", "perclass:0.8"])  # fmt: skip
    p.add_argument("--out")
    args = p.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for stack in acdc_stacks(Path(args.data), parse_range(args.patients)):
        if len(split_kept_dropped(stack.n)[1]):
            paths.append(decode_once(stack, cache))
            print(f"decoded {stack.source}", flush=True)
    table = {}
    for rule in args.rules:
        table[rule] = summarise([score(path, rule) for path in paths])["dice"]
        print(rule, table[rule], flush=True)
    if args.out:
        write_json(args.out, {"patients": args.patients, "volumes": len(paths), "rows": table})


if __name__ == "__main__":
    main()
