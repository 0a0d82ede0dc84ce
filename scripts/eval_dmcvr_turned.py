"""DMCVR on stacks described turned in-plane: the ACDC gap protocol on the validation patients with every
kept stack's rows and columns turned by 90 degrees (same voxels in space), cropped turned back to the
training pose (default) or as described (``crop_angle`` forced to 0, the behaviour before 2026-11-28).

    python scripts/eval_dmcvr_turned.py --data ../shared/data/acdc --patients 61-80 --out dmcvr_turned.json
"""

from __future__ import annotations

import argparse
import json

import torch

import CardiacDiffusionLib.dmcvr.reconstruction as R
from CardiacDiffusionLib.cli.evaluate import parse_range
from CardiacDiffusionLib.reconstruction.gap import acdc_stacks, evaluate_gap
from CardiacDiffusionLib.utils.jsonfile import write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/acdc")
    p.add_argument("--patients", default="61-80")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="dmcvr_turned.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    stacks = [s.turned() for s in acdc_stacks(a.data, parse_range(a.patients))]
    pose = R.crop_angle
    results = {}
    for variant in ("turned_back", "as_described"):
        R.crop_angle = pose if variant == "turned_back" else (lambda labels, spacing: 0.0)
        for kept_labels in (True, False):
            key = f"{variant}_{'labels' if kept_labels else 'no_labels'}"
            results[key] = evaluate_gap(stacks, ["dmcvr"], kept_labels=kept_labels, options={"dmcvr": {"device": "cpu"}})["dmcvr"]
            print(key, json.dumps(results[key]), flush=True)
    R.crop_angle = pose
    write_json(a.out, {"protocol": "ACDC gap protocol, kept stacks turned 90 deg in-plane", "patients": a.patients,
                       "results": results})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
