"""The roughness guard of dmcvr (``ROUGHNESS_GUARD``): which threshold, decided on data never reported.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/try_dmcvr_guard.py --data ../shared/data/acdc --patients 41-60 \
        [--phantoms 20-29] [--guards off 2.0 1.6 1.4 1.2] [--out FILE]

Each volume is encoded and decoded once with the lowest guard; the decodes with and without the fallback (the
nearer neighbour's x_T) and every generated crop's roughness ratio are kept, then each guard's output is
assembled from them and labelled as dmcvr would (same rest of the pipeline). ACDC: gap protocol with the kept
slices' labels (Dice, PSNR, SSIM of the dropped slices); phantoms: the 1 mm LAX check with SAX labels (mean
Dice over 2ch/3ch/4ch). Prints per guard the means and how many generated crops it re-decoded.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from CardiacDiffusionLib.cli.evaluate import parse_range
from CardiacDiffusionLib.dmcvr import reconstruction as R
from CardiacDiffusionLib.labels import MR_LABELS
from CardiacDiffusionLib.phantoms.scanner import make_subject
from CardiacDiffusionLib.reconstruction.gap import acdc_stacks, score_volume, split_kept_dropped, summarise
from CardiacDiffusionLib.reconstruction.lax_check import lax_dice
from CardiacDiffusionLib.reconstruction.volume import reconstruct
from CardiacDiffusionLib.utils.jsonfile import write_json

from eval_lax_phantoms import slice_records, truth_on  # noqa: E402 (scripts/ is on the path when run as a script)


def guarded_runs(run, guards: list[float | None]) -> tuple[dict, dict]:
    """``run()`` (a dmcvr call) once per guard, decoding only once: {guard: result}, {guard: crops re-decoded}."""
    lowest = min(guards)
    seen: dict = {"plain": []}
    fill, ratio_fn, decode = R._fill, R.roughness_ratio, R._decode

    def record_ratio(*a):
        seen["ratio"] = ratio_fn(*a)
        return seen["ratio"]

    def record_decode(*a):
        out = decode(*a)
        if "ratio" not in seen:  # the plain decodes come before the ratio, the fallback ones after
            seen["plain"].append(out)
        return out

    def record_fill(*a):
        seen["out"] = fill(*a[:-1], lowest)
        return seen["out"]

    R._fill, R.roughness_ratio, R._decode = record_fill, record_ratio, record_decode
    try:
        run()
    finally:
        R._fill, R.roughness_ratio, R._decode = fill, ratio_fn, decode
    out, ratio = seen["out"], seen.get("ratio", np.zeros(0))
    plain = torch.cat(seen["plain"]) if seen["plain"] else None
    results, counts = {}, {}
    for guard in guards:
        def assemble(net, crops, positions, targets, *rest, guard=guard):
            lo, hi, _ = R.interpolation_plan(positions, targets)
            todo = np.nonzero(lo != hi)[0]
            mixed = out.clone()
            if len(todo):
                keep = ratio <= guard
                mixed[torch.as_tensor(todo[keep])] = plain[torch.as_tensor(np.nonzero(keep)[0])]
            return mixed

        R._fill = assemble
        try:
            results[str(guard)] = run()
        finally:
            R._fill = fill
        counts[str(guard)] = int((ratio > guard).sum())
    return results, {"redecoded": counts, "ratio": [round(float(r), 3) for r in ratio]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data")
    p.add_argument("--patients", default="41-60")
    p.add_argument("--phantoms", help="seeds, e.g. 20-29")
    p.add_argument("--noise", type=float, default=0.04, help="phantoms' Rician noise sigma (make_subject's default 0.04)")
    p.add_argument("--guards", nargs="+", default=["off", "2.0", "1.6", "1.4", "1.2"])
    p.add_argument("--out")
    args = p.parse_args()
    guards = [np.inf if g == "off" else float(g) for g in args.guards]
    torch.manual_seed(0)
    rows: dict[str, list] = {str(g): [] for g in guards}
    counts: dict[str, int] = {str(g): 0 for g in guards}
    ratios: dict[str, list] = {}
    warnings.simplefilter("ignore")
    if args.data:
        for stack in acdc_stacks(Path(args.data), parse_range(args.patients)):
            kept, dropped = split_kept_dropped(stack.n)
            if len(dropped) == 0:
                continue
            results, info = guarded_runs(lambda: score_volume(stack, "dmcvr", device="cpu"), guards)
            for g, row in results.items():
                rows[g].append(row)
                counts[g] += info["redecoded"][g]
            ratios[stack.source] = info["ratio"]
            print(Path(stack.source).name, "max ratio", max(info["ratio"]), flush=True)
    views: dict[str, dict[str, list]] = {str(g): {} for g in guards}
    slices: dict[str, dict] = {}
    if args.phantoms:
        for seed in parse_range(args.phantoms):
            subject = make_subject(seed, noise_sigma=args.noise)
            results, info = guarded_runs(lambda: reconstruct(subject.sax, "dmcvr", 1.0, device="cpu"), guards)
            shape = reconstruct(subject.sax, "shape", 1.0)
            shape_labels, truth = sitk.GetArrayFromImage(shape.labels), truth_on(shape.labels, subject.phantom)
            offsets = subject.sax.positions - subject.sax.positions[0]
            generated = np.min(np.abs(np.arange(len(shape_labels))[:, None] * shape.spacing - offsets[None]), 1) > 1e-3
            for g, result in results.items():
                record = slice_records(sitk.GetArrayFromImage(result.labels), shape_labels, truth, generated)
                slices.setdefault(g, {})[str(seed)] = record
                per_view = {view: lax_dice(result.labels, lab) for view, lab in subject.lax_labels.items()}
                for view, row in per_view.items():
                    for name in MR_LABELS.values():
                        views[g].setdefault(f"{view} {name}", []).append(row[name])
                dice = {name: [row[name] for row in per_view.values() if row[name] is not None] for name in MR_LABELS.values()}
                rows[g].append({"psnr": None, "ssim": None, "dice": {k: float(np.mean(v)) if v else None for k, v in dice.items()}})
                counts[g] += info["redecoded"][g]
            ratios[f"phantom {seed}"] = info["ratio"]
            print(f"phantom {seed} max ratio", max(info["ratio"]), {g: {k: round(v, 4) for k, v in r[-1]["dice"].items()}
                                                                   for g, r in rows.items()}, flush=True)  # fmt: skip
    table = {}
    for g in rows:
        table[g] = {**summarise(rows[g]), "redecoded": counts[g]}
        print(g, json.dumps(table[g]), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, {"patients": args.patients if args.data else None, "phantoms": args.phantoms,
                              "noise": args.noise, "rows": table, "views": views, "ratios": ratios, "slices": slices},
                   indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
