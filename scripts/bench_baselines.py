"""Time and peak memory of the classical reconstructions and of the LAX check on an MR phantom.

    .venv/bin/python scripts/bench_baselines.py [--matrix 128] [--repeats 5] [--out bench/baselines.json]

Cases: nearest, linear and shape (the baseline of the ratios) reconstructing the phantom's SAX
stack to 1 mm, and the LAX check of the shape volume on the 2ch/3ch/4ch planes.
"""

from __future__ import annotations

import argparse
import json

from CardiacDiffusionLib.phantoms.scanner import make_subject
from CardiacDiffusionLib.reconstruction.lax_check import lax_dice_table
from CardiacDiffusionLib.reconstruction.volume import reconstruct
from CardiacDiffusionLib.utils.bench import measure, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/baselines.json")
    args = parser.parse_args()
    subject = make_subject(args.seed, matrix=args.matrix)
    results = {m: measure(lambda m=m: reconstruct(subject.sax, m, 1.0), args.repeats) for m in ("nearest", "linear", "shape")}
    volume = reconstruct(subject.sax, "shape", 1.0).labels
    results["lax_check"] = measure(lambda: lax_dice_table(volume, subject.lax_labels), args.repeats)
    config = {"matrix": args.matrix, "slices": subject.sax.n, "output_spacing_mm": 1.0,
              "output_size": list(volume.GetSize()), "lax_views": sorted(subject.lax_labels)}  # fmt: skip
    report = write_report(args.out, results, "shape", config, "classical SAX reconstruction and LAX check")
    print(json.dumps({k: {"median_s": round(v["median_s"], 4), "peak_rss_mib": round(v.get("peak_rss_mib", 0), 1)}
                      for k, v in report["results"].items()}, indent=2))  # fmt: skip
    print("ratios (shape time / case time):", json.dumps(report["ratios"]))


if __name__ == "__main__":
    main()
