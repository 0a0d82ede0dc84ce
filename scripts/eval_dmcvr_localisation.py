"""DMCVR's heart localisation without labels on ACDC: for each volume's gap-protocol kept slices, the offset of
``heart_center`` from the labels' centre (mm, at the files' nominal spacing or ``--pixel-mm``) and the net's
confidence; misses (> 30 mm) and the volumes under ``LOCALISATION_MIN_CONFIDENCE`` are listed.

    python scripts/eval_dmcvr_localisation.py --data ../shared/data/acdc --patients 1-80 --out localisation.json
    python scripts/eval_dmcvr_localisation.py --patients 57-57 --pixel-mm 0.75     # 057 at a plausible pixel size
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch

import CardiacDiffusionLib.dmcvr.reconstruction as R
from CardiacDiffusionLib.cli.evaluate import parse_range
from CardiacDiffusionLib.reconstruction.gap import acdc_stacks, split_kept_dropped
from CardiacDiffusionLib.utils.jsonfile import write_json

MISS_MM = 30.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/acdc")
    p.add_argument("--patients", default="1-80")
    p.add_argument("--pixel-mm", type=float, help="in-plane pixel size to assume (default: the reader's nominal)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="dmcvr_localisation.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    net, size, spacing = R.load_dmcvr(None, "cpu")
    rows = []
    for stack in acdc_stacks(a.data, parse_range(a.patients)):
        if a.pixel_mm:
            stack = dataclasses.replace(stack, pixel_spacing=(a.pixel_mm, a.pixel_mm))
        kept = stack.subset(split_kept_dropped(stack.n)[0])
        pixels, labels = R.aligned_arrays(kept)
        lo, hi = R.normalisation(pixels)
        center, confidence = R.heart_center(net, (np.minimum(pixels, hi) - lo) / (hi - lo), kept.pixel_spacing, size, spacing)
        offset = (np.array(center) - np.array(R.label_center(labels))) * np.array(kept.pixel_spacing[::-1])
        rows.append({"volume": stack.source, "offset_mm": round(float(np.linalg.norm(offset)), 1),
                     "confidence": round(confidence, 3)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    offsets = np.array([r["offset_mm"] for r in rows])
    summary = {"volumes": len(rows), "median_offset_mm": round(float(np.median(offsets)), 1),
               "misses": [r["volume"] for r in rows if r["offset_mm"] > MISS_MM],
               "unsure": [r["volume"] for r in rows if r["confidence"] < R.LOCALISATION_MIN_CONFIDENCE]}  # fmt: skip
    print(json.dumps(summary))
    write_json(a.out, {"protocol": "ACDC gap protocol kept slices, no labels given", "patients": a.patients,
                       "pixel_mm": a.pixel_mm, "summary": summary, "rows": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
