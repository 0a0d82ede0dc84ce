"""Benchmark: band-limited (FLASH) geodesic shooting + warp vs the full-resolution spatial baseline.

Times forward (shoot + warp), forward + backward and the EPDiff integration alone at 64^3, float32,
on CPU and on CUDA when present.
Each (device, method) runs in its own process so the peak resident memory (CPU) belongs to that method alone.

    python scripts/bench_epdiff.py --out bench_epdiff.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from CardiacDiffusionLib.sadir import EPDiffShooting, SpatialEPDiffShooting
from CardiacDiffusionLib.utils.bench import measure, write_report

METHODS = {
    "flash": lambda shape, a: EPDiffShooting(shape, truncation=a.truncation, steps=a.steps),
    "spatial_eulerian": lambda shape, a: SpatialEPDiffShooting(shape, steps=a.steps),
    "spatial_lagrangian": lambda shape, a: SpatialEPDiffShooting(shape, steps=a.steps, form="lagrangian"),
}
BASELINE = "spatial_eulerian"


def inputs(shape, device):
    """A smooth random velocity (max 3 voxels) and a blob image, identical for every method."""
    gen = torch.Generator().manual_seed(0)
    helper = EPDiffShooting(shape, truncation=5, dtype=torch.float64)
    coeffs = torch.randn(1, 3, 5, 5, 5, dtype=torch.complex128, generator=gen)
    v0 = helper.to_spatial(helper.coefficients(coeffs))
    v0 = 3.0 * v0 / v0.abs().max()
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    image = torch.exp(-sum((g - n / 2) ** 2 for g, n in zip(grids, shape)) / (2 * (shape[0] / 6) ** 2))
    return v0.float().to(device), image[None, None].float().to(device)


def run_case(method: str, device: str, args) -> dict:
    shape = (args.size,) * 3
    shooter = METHODS[method](shape, args).to(device)
    v0, image = inputs(shape, device)

    def forward():
        with torch.no_grad():
            return shooter.shoot_and_warp(image, v0)

    def forward_backward():
        v = v0.clone().requires_grad_()
        ((shooter.shoot_and_warp(image, v) - image) ** 2).mean().backward()
        return v.grad

    def shoot_only():  # the EPDiff integration alone, without the full-resolution flow and warp
        with torch.no_grad():
            return shooter.shoot(v0)

    cases = [("forward", forward), ("forward_backward", forward_backward)]
    if method != "spatial_lagrangian":  # the Lagrangian form integrates v and phi together
        cases.append(("shoot_only", shoot_only))
    # utils/bench.measure: median/min time and the peak memory of the timed runs (VmHWM / CUDA allocator)
    out = {name: measure(fn, repeats=args.repeats, warmup=1, device=device) for name, fn in cases}
    with torch.no_grad():
        torch.save(shooter(v0)[0].cpu(), args.disp_out)  # for the accuracy comparison in the parent
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--truncation", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench_epdiff.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--disp-out", default=os.devnull, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # child process: one method on one device
        print(json.dumps(run_case(args.case, args.device, args)))
        return

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results, accuracy = {}, {}
    for device in devices:
        results[device] = {}
        for method in METHODS:
            disp_path = f"{args.out}.{device}.{method}.pt"
            cmd = [sys.executable, __file__, "--case", method, "--device", device, "--disp-out", disp_path,
                   "--size", str(args.size), "--steps", str(args.steps), "--truncation", str(args.truncation),
                   "--repeats", str(args.repeats)]
            results[device][method] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(device, method, results[device][method], flush=True)
        disps = {m: torch.load(f"{args.out}.{device}.{m}.pt") for m in METHODS}
        accuracy[device] = {
            f"max_abs_displacement_diff_vs_{BASELINE}_voxels": {
                m: (disps[m] - disps[BASELINE]).abs().max().item() for m in METHODS if m != BASELINE
            },
            "max_abs_displacement_voxels": disps[BASELINE].abs().max().item(),
        }
        for m in METHODS:
            os.remove(f"{args.out}.{device}.{m}.pt")
    ratio = {
        device: {
            f"{BASELINE}_time_over_{m}_time": {
                kind: results[device][BASELINE][kind]["median_s"] / results[device][m][kind]["median_s"]
                for kind in ("forward", "forward_backward", "shoot_only")
                if kind in results[device][m]
            }
            for m in METHODS if m != BASELINE
        }
        for device in devices
    }
    flat = {f"{d}/{m}/{kind}": r for d in devices for m in METHODS for kind, r in results[d][m].items()}
    write_report(
        args.out, flat, f"cpu/{BASELINE}/forward",
        config={"size": args.size, "steps": args.steps, "truncation": args.truncation, "repeats": args.repeats},
        description="geodesic shooting (EPDiff, alpha=3, gamma=1, c=3) + trilinear warp, batch 1, float32",
        ratio=ratio, accuracy=accuracy,
    )  # fmt: skip
    print(json.dumps({"ratio": ratio, "accuracy": accuracy}, indent=2))


if __name__ == "__main__":
    main()
