"""Time and peak memory of the classical reconstructions and of the LAX check on an MR phantom.

    .venv/bin/python scripts/bench_baselines.py [--matrix 128] [--repeats 5] [--out bench/baselines.json]
        [--sax ../shared/data/acdc/patient001_frame01.h5 --sax-spacing 0.5]

Cases: nearest, linear and shape (the baseline of the ratios) reconstructing the phantom's SAX
stack to 1 mm, and the LAX check of the shape volume on the 2ch/3ch/4ch planes; with ``--sax`` (a labelled
SAX stack: ACDC HDF5, a DICOM folder or a volume) also ``sax_nearest`` and ``sax_shape`` on it at ``--sax-spacing`` mm.
"""

from __future__ import annotations

import argparse
import json
import warnings

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
    parser.add_argument("--sax", help="a labelled SAX stack (real data) to time nearest and shape on too")
    parser.add_argument("--sax-spacing", type=float, default=0.5, help="through-plane spacing (mm) for --sax")
    args = parser.parse_args()
    subject = make_subject(args.seed, matrix=args.matrix)
    results = {m: measure(lambda m=m: reconstruct(subject.sax, m, 1.0), args.repeats) for m in ("nearest", "linear", "shape")}
    volume = reconstruct(subject.sax, "shape", 1.0).labels
    results["lax_check"] = measure(lambda: lax_dice_table(volume, subject.lax_labels), args.repeats)
    config = {"matrix": args.matrix, "slices": subject.sax.n, "output_spacing_mm": 1.0,
              "output_size": list(volume.GetSize()), "lax_views": sorted(subject.lax_labels)}  # fmt: skip
    if args.sax:
        from CardiacDiffusionLib.io.volumes import read_stack

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sax = read_stack(args.sax, name="--sax")
        for m in ("nearest", "shape"):
            results[f"sax_{m}"] = measure(lambda m=m: reconstruct(sax, m, args.sax_spacing), args.repeats)
        config["sax"] = {"file": args.sax, "shape": list(sax.pixels.shape), "spacing_mm": args.sax_spacing}
    report = write_report(args.out, results, "shape", config, "classical SAX reconstruction and LAX check")
    print(json.dumps({k: {"median_s": round(v["median_s"], 4), "peak_rss_mib": round(v.get("peak_rss_mib", 0), 1)}
                      for k, v in report["results"].items()}, indent=2))  # fmt: skip
    print("ratios (shape time / case time):", json.dumps(report["ratios"]))


if __name__ == "__main__":
    main()
