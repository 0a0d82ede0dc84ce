"""Measure the LMA map against phantom truth: TOS MAE (sectors and mesh), late-region Dice, lead segment.

MR phantom seeds x held-out activation seeds (from train_tos.TEST_SEED, never used to train the
regressor), each through ``run_lma`` with the onset detector and the learned regressor.

    python scripts/eval_lma.py --mr-seeds 0 1 2 3 4 --activations 4 --out eval_lma.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from vtk.util.numpy_support import vtk_to_numpy

from CardiacDiffusionLib.activation.bullseye import segment_of, segment_table, suggest_lead
from CardiacDiffusionLib.activation.mapping import mesh_points
from CardiacDiffusionLib.activation.phantom_case import PhantomCase
from CardiacDiffusionLib.activation.pipeline import run_lma
from CardiacDiffusionLib.activation.train_tos import TEST_SEED
from CardiacDiffusionLib.utils.jsonfile import write_json


def evaluate(case: PhantomCase, method: str, percentile: float) -> dict:
    r = run_lma(case.stack, strain=case.strain, frame_ms=case.frame_ms, tos_method=method, late_percentile=percentile)
    points = mesh_points(r.mesh)
    tos = vtk_to_numpy(r.mesh.GetPointData().GetArray("TOS_ms"))
    late = vtk_to_numpy(r.mesh.GetPointData().GetArray("late_activation")).astype(bool)
    truth, a, h = case.truth_at(points)
    true_late = truth >= np.percentile(truth, percentile)
    true_table = segment_table(segment_of(a, h), truth)
    true_lead = suggest_lead(true_table)
    by_segment = {row["segment"]: row["tos_median_ms"] for row in true_table}
    return {
        "sector_tos_mae_ms": float(np.abs(r.tos - case.sector_truth).mean()),
        "mesh_tos_mae_ms": float(np.abs(tos - truth).mean()),
        "late_dice": float(2 * (late & true_late).sum() / (late.sum() + true_late.sum())),
        "lead_segment": r.lead["segment"],
        "true_lead_segment": true_lead["segment"],
        "lead_exact": r.lead["segment"] == true_lead["segment"],
        "lead_true_tos_deficit_ms": float(true_lead["tos_median_ms"] - by_segment[r.lead["segment"]]),
        "qa": [f["code"] for f in r.lma["qa"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mr-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--activations", type=int, default=2, help="held-out activation seeds per MR seed")
    parser.add_argument("--pattern", default="lbbb", choices=("lbbb", "normal"))
    parser.add_argument("--percentile", type=float, default=75.0)
    parser.add_argument("--out", default="eval_lma.json")
    args = parser.parse_args()
    rows = []
    for seed in args.mr_seeds:
        for k in range(args.activations):
            case = PhantomCase(seed, TEST_SEED + 100 * seed + k, args.pattern)
            for method in ("detector", "regressor"):
                row = {"mr_seed": seed, "activation_seed": TEST_SEED + 100 * seed + k, "method": method,
                       **evaluate(case, method, args.percentile)}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for method in ("detector", "regressor"):
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {key: float(np.mean([r[key] for r in mine])) for key in
                           ("sector_tos_mae_ms", "mesh_tos_mae_ms", "late_dice", "lead_exact",
                            "lead_true_tos_deficit_ms")}  # fmt: skip
    report = {"config": vars(args), "summary": summary, "cases": rows}
    write_json(args.out, report)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
