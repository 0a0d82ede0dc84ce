"""``cardiac-diffusion inspect``: what the readers see in a SAX input (and its labels), before any work.

Slices, grid, gaps and shifts, the normal, the cardiac phases on offer (trigger times of a DICOM cine), the
labels per slice and which way the apex lies, and every warning a reconstruction would print.
"""

from __future__ import annotations

import argparse

import numpy as np

from ..labels import MR_LABELS
from .common import add_label_convention, lax_inputs, output_file, stack_report, write_json_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="what a SAX input holds: slices, geometry, phases, labels, warnings")
    p.add_argument("--sax", required=True, help="SAX stack: NIfTI/NRRD/MHA volume, a DICOM folder or an ACDC HDF5 file")
    p.add_argument("--sax-labels", help="labels of the SAX stack (same grid)")
    p.add_argument("--lax-labels", nargs="*", default=[],
                   help="LAX label images: their angle to the SAX slices, what of them a reconstruction reaches, and "
                        "(with --sax-labels) how the LAX and SAX labels agree where the planes cross")  # fmt: skip
    p.add_argument("--spacing", type=float, default=1.0, help="through-plane spacing of a reconstruction, mm (default 1)")
    p.add_argument("--phase", type=int, help="cine input: the phase to look at (default: the first)")
    p.add_argument("--out", help="also write the summary as a JSON file")
    add_label_convention(p)
    p.set_defaults(func=run)


def summary(stack, on_offer: list[dict], phase: int, lax: dict | None = None, spacing: float = 1.0) -> dict:
    """The stack's geometry report (with the reader's warnings), phases and labels, and what the LAX label images
    ``lax`` ({name: image}) offer a reconstruction at ``spacing`` (reconstruction.lax_check.lax_overview), JSON-able."""
    from ..geometry.stack import anatomy_says_normal_points_to_apex, area_trend, normal_points_to_apex

    out = {"source": stack.meta.get("path", stack.source), **stack_report(stack), "phases": on_offer, "phase": phase}
    out["apex_along_normal_by_anatomy"] = anatomy_says_normal_points_to_apex(stack)  # None: orientation cannot say
    if stack.labels is not None:
        out["labels"] = {name: [int(k) for k in np.nonzero((stack.labels == v).any(axis=(1, 2)))[0]]
                         for v, name in MR_LABELS.items()}  # slices holding each label  # fmt: skip
        areas = (stack.labels > 0).reshape(stack.n, -1).sum(1)
        trend = area_trend(stack.positions, areas)
        out["heart_area_trend_along_normal"] = None if trend is None else round(trend, 3)
        out["apex_along_normal"] = normal_points_to_apex(stack)
    if lax:
        from ..reconstruction.lax_check import lax_overview

        out["lax"] = lax_overview(stack, lax, spacing)
        out["warnings"] += [w for row in out["lax"].values() for w in row["warnings"]]
    return out


def run(args: argparse.Namespace) -> int:
    from ..io.volumes import read_labels, read_stack, volume_phases

    out = output_file(args.out, [args.sax, args.sax_labels, *args.lax_labels]) if args.out else None
    phase = args.phase if args.phase is not None else 0  # phase 0 of a one-phase file is the file
    stack = read_stack(args.sax, labels_path=args.sax_labels, convention=args.label_convention, name="--sax",
                       phase=phase)  # fmt: skip
    times = stack.meta.get("trigger_times_ms") or [None] * volume_phases(args.sax, name="--sax")  # DICOM: read once
    on_offer = [{"phase": k, "trigger_time_ms": t} for k, t in enumerate(times)]
    lax = lax_inputs(args.lax_labels, args.label_convention, read_labels)
    info = summary(stack, on_offer, phase, lax, args.spacing)
    times = [p["trigger_time_ms"] for p in on_offer]
    print(f"{info['source']}: {info['slices']} slices of {info['rows_cols'][0]} x {info['rows_cols'][1]} pixels "
          f"({info['pixel_spacing_mm'][0]:g} x {info['pixel_spacing_mm'][1]:g} mm), normal {info['normal_lps']}")  # fmt: skip
    print(f"gaps (mm): {info['slice_gaps_mm']}")
    print(f"phases: {len(on_offer)}" + (f", trigger times (ms) {times}" if any(t is not None for t in times) else "")
          + f"; shown: phase {info['phase']}")  # fmt: skip
    by_anatomy = info["apex_along_normal_by_anatomy"]
    print("apex along the normal by the anatomy (true geometry): "
          + ("unknown (no orientation stored, or the normal lies across the heart's axis)" if by_anatomy is None
             else str(by_anatomy)))  # fmt: skip
    if "labels" in info:
        for name, slices in info["labels"].items():
            print(f"{name}: slices {slices}")
        print(f"apex along the normal: {info['apex_along_normal']} (heart area trend {info['heart_area_trend_along_normal']})")
    for name, row in info.get("lax", {}).items():
        agreement = row.get("agreement_with_sax_labels")
        said = "" if agreement is None else ", agreement with the SAX labels where the planes cross " + ", ".join(
            f"{k} {'n/a' if d is None else f'{d:.2f}'}" for k, d in agreement["dice"].items())  # fmt: skip
        print(f"{name}: {row['angle_to_sax_deg']:g} deg to the SAX slices, {row['pixels_in_sax_extent']} pixels inside "
              f"the reconstructed volume{said}")  # fmt: skip
    for warning in info["warnings"]:
        print(f"warning: {warning}")
    if out is not None:
        write_json_file(out, info)
        print(f"inspect: wrote {out}")
    return 0
