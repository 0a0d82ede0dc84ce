"""Benchmark: the LMA pipeline (labelled SAX stack + strain -> painted mesh, bullseye) on CPU.

Cases, timed in one process with ``utils/bench.measure`` (peak RSS per case via VmHWM):
``shape_detector`` (baseline: shape-based myocardium, onset detector), ``shape_regressor`` (learned
TOS), ``sadir_detector`` (when ``sadir.reconstruct_myocardium`` exists; ``sadir_norefine_detector`` the same without
the test-time refinement) and ``sadir_shooting`` (one
10-step EPDiff shoot + warp at --size^3, the deformation step of SADIR). Ratios are to the baseline
of the same run.

    python scripts/bench_lma.py --out bench_lma.json [--repeats 3] [--matrix 128]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from CardiacDiffusionLib.activation.pipeline import run_lma
from CardiacDiffusionLib.activation.sectors import lv_frame
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.phantoms.activation import ActivationPhantom
from CardiacDiffusionLib.phantoms.mr import MRPhantom
from CardiacDiffusionLib.phantoms.scanner import acquire_sax
from CardiacDiffusionLib.utils.bench import measure, write_report


def inputs(seed: int, matrix: int, pixel_mm: float):
    phantom = MRPhantom(seed)
    stack = acquire_sax(phantom, matrix=matrix, pixel_mm=pixel_mm, noise_sigma=0.0, sub_planes=1)
    frame = lv_frame(stack)
    heights = np.clip(frame.slice_heights(), 0, 1)
    strain = ActivationPhantom(seed).strain_matrices(len(frame.slices), 18, 40, 17.0, heights=heights)
    return stack, strain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matrix", type=int, default=128)
    parser.add_argument("--pixel-mm", type=float, default=1.5625)
    parser.add_argument("--size", type=int, default=64, help="grid of the shooting case")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench_lma.json")
    args = parser.parse_args()
    stack, strain = inputs(args.seed, args.matrix, args.pixel_mm)
    cases = {
        "shape_detector": lambda: run_lma(stack, strain=strain, method="shape", tos_method="detector"),
        "shape_regressor": lambda: run_lma(stack, strain=strain, method="shape", tos_method="regressor"),
    }
    import CardiacDiffusionLib.sadir as sadir

    skipped = {}
    try:  # SADIR's myocardium needs its code and a registered model
        run_lma(stack, strain=strain, method="sadir")
        cases["sadir_detector"] = lambda: run_lma(stack, strain=strain, method="sadir", tos_method="detector")
        cases["sadir_norefine_detector"] = lambda: run_lma(  # the network's v0 alone, no test-time refinement
            stack, strain=strain, method="sadir", tos_method="detector", sadir_options={"refine_iters": 0})
    except InputError as error:
        skipped["sadir_detector"] = str(error)
        print(f"sadir_detector skipped: {error}", flush=True)
    shooter = sadir.EPDiffShooting((args.size,) * 3)
    v0 = 0.5 * torch.randn(1, 3, *(args.size,) * 3, generator=torch.Generator().manual_seed(0))
    image = torch.rand(1, 1, *(args.size,) * 3, generator=torch.Generator().manual_seed(1))

    def shoot():
        with torch.no_grad():
            return shooter.shoot_and_warp(image, v0)

    cases["sadir_shooting"] = shoot
    results = {}
    for name, fn in cases.items():
        results[name] = measure(fn, repeats=args.repeats, warmup=1)
        print(name, {k: round(v, 3) for k, v in results[name].items() if isinstance(v, float)}, flush=True)
    report = write_report(
        args.out, results, "shape_detector",
        config={"seed": args.seed, "matrix": args.matrix, "pixel_mm": args.pixel_mm, "slices": stack.n,
                "strain_shape": list(strain.shape), "shooting_size": args.size, "repeats": args.repeats},
        description="LMA pipeline (myocardium, TOS, painted mesh, AHA bullseye) and SADIR shooting on one MR phantom",
        skipped=skipped,
    )  # fmt: skip
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()
