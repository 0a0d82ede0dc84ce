"""Time and peak memory to reconstruct a 12-slice SAX stack to 1 mm: dmcvr against the shape baseline.

    .venv/bin/python scripts/bench_reconstruct.py [--steps 10] [--strength 0.3] [--device cpu] [--threads 2] [--repeats 3]
        [--batch-size N] [--model NAME|PATH] [--out bench/reconstruct.json]

The stack: an MR phantom SAX stack (128 x 128 pixels of 1.5625 mm, 12 slices ~9-10 mm apart,
oblique). Cases: ``shape`` (baseline of the ratios, measured in the same run), ``linear`` and
``dmcvr`` with the given DDIM steps (encode and decode each), device and batch size.
"""

from __future__ import annotations

import argparse
import json

import torch

from CardiacDiffusionLib.dmcvr.reconstruction import DEFAULT_BATCH, DEFAULT_STEPS, DEFAULT_STRENGTH, load_dmcvr
from CardiacDiffusionLib.phantoms.mr import MRPhantom
from CardiacDiffusionLib.phantoms.scanner import acquire_sax
from CardiacDiffusionLib.reconstruction.volume import reconstruct, target_positions
from CardiacDiffusionLib.utils.bench import measure, write_report
from CardiacDiffusionLib.utils.device import resolve_device


def twelve_slice_stack(seed: int):
    """The phantom's SAX stack with the largest gap in 10..8 mm that gives at least 12 slices, first 12 kept."""
    for gap in (10.0, 9.5, 9.0, 8.5, 8.0):
        stack = acquire_sax(MRPhantom(seed, "ED"), gap_mm=gap)
        if stack.n >= 12:
            return stack.subset(range(12)), gap
    raise RuntimeError(f"phantom {seed}: no 12-slice stack with gaps of 8-10 mm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps for encode and decode (default: the model's)")
    parser.add_argument("--strength", type=float, default=None, help="fraction of the schedule inverted (1 = full)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/reconstruct.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    stack, gap = twelve_slice_stack(args.seed)
    net, size, spacing = load_dmcvr(args.model, str(device))
    steps = args.steps or DEFAULT_STEPS
    strength = DEFAULT_STRENGTH if args.strength is None else args.strength
    batch = args.batch_size or DEFAULT_BATCH.get(device.type, 32)
    options = {"steps": steps, "strength": strength, "device": str(device), "batch_size": batch, "model": args.model}
    results = {m: measure(lambda m=m: reconstruct(stack, m, 1.0), args.repeats) for m in ("linear", "shape")}
    results["dmcvr"] = measure(lambda: reconstruct(stack, "dmcvr", 1.0, **options), args.repeats, device=device)
    targets = target_positions(stack.positions, 1.0)
    config = {"slices": stack.n, "gap_mm": gap, "matrix": list(stack.shape2d), "pixel_mm": stack.pixel_spacing[0],
              "output_spacing_mm": 1.0, "output_slices": len(targets), "generated_slices": len(targets) - stack.n,
              "dmcvr_steps_encode": steps, "dmcvr_steps_decode": steps, "dmcvr_batch_size": batch, "dmcvr_strength": strength,
              "dmcvr_crop": [size, size], "dmcvr_crop_spacing_mm": spacing, "device": str(device),
              "torch_threads": torch.get_num_threads(), "model": args.model or "default"}  # fmt: skip
    report = write_report(args.out, results, "shape", config, "SAX stack (12 slices) to 1 mm: dmcvr vs shape")
    print(json.dumps(config))
    print(json.dumps({k: {"median_s": round(v["median_s"], 3), "peak_rss_mib": round(v.get("peak_rss_mib", 0), 1),
                          **({"cuda_mib": round(v["cuda_max_memory_allocated_mib"], 1)}
                             if "cuda_max_memory_allocated_mib" in v else {})}
                      for k, v in report["results"].items()}, indent=2))  # fmt: skip
    print("ratios (shape time / case time):", json.dumps(report["ratios"]))


if __name__ == "__main__":
    main()
