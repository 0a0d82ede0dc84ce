"""A rule tried for dmcvr without labels and not adopted: choose the crop's in-plane turn by the morphology net's
confidence (mean top-class probability of its labelled pixels) among the pose rule's turn and the four quarter
turns that put the net's RV at 170 deg. The gap protocol without the kept slices' labels, stacks as acquired or
described turned by 90 deg (``SliceStack.turned``); ``--rule`` picks the default, the search everywhere, or the
search only where the pose rule turns.

    python scripts/try_dmcvr_pose_search.py --patients 41-60 --rule search [--turned]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import CardiacDiffusionLib.dmcvr.reconstruction as R
from CardiacDiffusionLib.cli.evaluate import parse_range
from CardiacDiffusionLib.dmcvr.data import rv_angle
from CardiacDiffusionLib.reconstruction.gap import acdc_stacks, evaluate_gap

ACDC_POSE_DEG = 170.0


def confidence(net, view, angle: float) -> float:
    probs = R.class_probs(net, view.crops(angle)[1], 16).numpy()
    labels = probs.argmax(1)
    return float(probs.max(1)[labels > 0].mean()) if (labels > 0).any() else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/acdc")
    p.add_argument("--patients", default="41-60")
    p.add_argument("--rule", choices=("default", "search", "search_if_turn"), default="search")
    p.add_argument("--turned", action="store_true", help="describe every stack turned by 90 deg in-plane")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    generate, pose_rule = R._generate, R.crop_angle

    def searched(net, view, targets, *args, **kwargs):
        labels, spacing = view.slice_labels()
        rule = pose_rule(labels, spacing)
        if view.labels is not None or (a.rule == "search_if_turn" and rule == 0.0):
            return generate(net, view, targets, *args, **kwargs)
        turns = [rule]
        theta = rv_angle(labels, spacing)
        if theta is not None:
            turns += [np.deg2rad(ACDC_POSE_DEG) - theta + q * np.pi / 2 for q in range(4)]
        best = float(turns[int(np.argmax([confidence(net, view, t) for t in turns]))])
        R.crop_angle = lambda *_: best
        try:
            return generate(net, view, targets, *args, **kwargs)
        finally:
            R.crop_angle = pose_rule

    if a.rule != "default":
        R._generate = searched
    stacks = [s.turned() if a.turned else s for s in acdc_stacks(a.data, parse_range(a.patients))]
    result = evaluate_gap(stacks, ["dmcvr"], kept_labels=False, options={"dmcvr": {"device": "cpu"}})["dmcvr"]
    print(json.dumps({"rule": a.rule, "patients": a.patients, "turned": a.turned, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
