"""``cardiac-diffusion inspect``: what the readers see in a SAX input (and its labels), before any work.

Slices, grid, gaps and shifts, the normal, the cardiac phases on offer (trigger times of a DICOM cine), the
labels per slice and which way the apex lies, and every warning a reconstruction would print; in plain words:
the orientation, which end of the stack is the base, the spacing, and whether ``--sax`` looks like a label map.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..labels import MR_LABELS
from .common import add_label_convention, check_lax_names, output_file, stack_report, write_json_file
from .lax_phases import lax_frames


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="what a SAX input holds: slices, geometry, phases, labels, warnings")
    p.add_argument("--sax", required=True, help="SAX stack: NIfTI/NRRD/MHA volume, a DICOM folder or an ACDC HDF5 file")
    p.add_argument("--sax-labels", help="labels of the SAX stack (same grid)")
    p.add_argument("--lax-labels", nargs="*", default=[],
                   help="LAX label images: their angle to the SAX slices, what of them a reconstruction reaches, and "
                        "(with --sax-labels) how the LAX and SAX labels agree where the planes cross")  # fmt: skip
    p.add_argument("--spacing", type=float,
                   help="with --lax-labels: through-plane spacing of a reconstruction, mm (default 1)")
    p.add_argument("--phase", type=int, help="cine input: the phase to look at (default: the first; a 4D LAX label "
                   "file is looked at in its frame of that phase)")  # fmt: skip
    p.add_argument("--lax-phase", type=int, metavar="FRAME",
                   help="a 4D LAX label file (a frame per cine phase) beside a 3D --sax, without phases: its frame")
    p.add_argument("--out", help="also write the summary as a JSON file")
    add_label_convention(p)
    p.set_defaults(func=run)


def summary(stack, on_offer: list[dict], phase: int, lax: dict | None = None, spacing: float = 1.0) -> dict:
    """The stack's geometry report (with the reader's warnings), phases and labels, and what the LAX label images
    ``lax`` ({name: image}) offer a reconstruction at ``spacing`` (reconstruction.lax_check.lax_overview), JSON-able."""
    from ..geometry.stack import anatomy_says_normal_points_to_apex, area_trend, normal_points_to_apex

    out = {"source": stack.meta.get("path", stack.source), **stack_report(stack), "phases": on_offer, "phase": phase}
    out["apex_along_normal_by_anatomy"] = anatomy_says_normal_points_to_apex(stack)  # None: orientation cannot say
    out["orientation"] = orientation_words(stack)
    trend = None
    if stack.labels is not None:
        out["labels"] = {name: [int(k) for k in np.nonzero((stack.labels == v).any(axis=(1, 2)))[0]]
                         for v, name in MR_LABELS.items()}  # slices holding each label  # fmt: skip
        areas = (stack.labels > 0).reshape(stack.n, -1).sum(1)
        trend = area_trend(stack.positions, areas)
        out["heart_area_trend_along_normal"] = None if trend is None else round(trend, 3)
        out["apex_along_normal"] = normal_points_to_apex(stack)
    out["slice_order"] = slice_order_words(stack.n, out["apex_along_normal_by_anatomy"], trend)
    out["warnings"] += dmcvr_input_warnings(stack)
    values = label_like_values(stack.pixels)
    out["looks_like_labels"] = values is not None
    if values is not None:
        out["warnings"].insert(0, f"--sax holds only the whole numbers {values}: it looks like a label map, not an "
                                  "image; give the image as --sax and this file as --sax-labels")  # fmt: skip
    if lax:
        from ..reconstruction.lax_check import lax_overview

        out["lax"] = lax_overview(stack, lax, spacing)
        out["warnings"] += [w for row in out["lax"].values() for w in row["warnings"]]
    return out


def dmcvr_input_warnings(stack) -> list[str]:
    """What dmcvr would say of the stack before any network runs (blank slices, slices left unlabelled)."""
    from ..reconstruction.slice_checks import input_warnings

    try:
        return [f"dmcvr: {w}" for w in input_warnings(stack)]
    except InputError as error:  # every slice blank: a reconstruction would refuse it
        return [f"dmcvr: {error}"]


_AXES = (("left", "right"), ("posterior", "anterior"), ("superior", "inferior"))  # LPS +x, +y, +z


def orientation_words(stack) -> str:
    """The slices' orientation in words: stored or not, axis-aligned or double-oblique, where the normal points."""
    if stack.meta.get("orientation_known") is False:
        return "not stored in the file (identity assumed): left/right, front/back cannot be told"
    normal = np.asarray(stack.normal, float)
    toward = ", ".join(pos if v > 0 else neg for v, (pos, neg) in zip(normal, _AXES) if abs(v) >= 0.3)
    oblique = int((np.abs(normal) > 0.1).sum())
    kind = {1: "axis-aligned (transverse, coronal or sagittal; a short-axis stack is double-oblique: check it)",
            2: "oblique", 3: "double-oblique, as a short-axis stack is"}[max(oblique, 1)]  # fmt: skip
    return f"{kind}; the normal points to the patient's {toward}"


def slice_order_words(n: int, by_anatomy: bool | None, trend: float | None) -> str:
    """Which end of the stack (slices numbered along the normal) is the base, by the anatomy or the labels."""
    first, last = "base", "apex"
    if by_anatomy is not None:
        why = "by the stored orientation"
        towards_apex = by_anatomy
    elif trend is not None and abs(trend) >= 0.25:  # the tolerance of geometry.stack.slice_order_warning
        why = "by the labels: the heart's area shrinks towards the apex"
        towards_apex = trend < 0
    else:
        return "unknown: the orientation cannot tell (not stored, axis-aligned or across the heart) and no labels show it"
    if not towards_apex:
        first, last = last, first
    return f"slice 0 is at the {first}, slice {n - 1} at the {last} ({why})"


def label_like_values(pixels: np.ndarray, most: int = 16) -> list[int] | None:
    """The values of an image that holds only a few whole numbers (0 among them), as a label map does; else None."""
    values = np.unique(pixels)
    if len(values) > most or not np.all(values == np.round(values)) or 0 not in values or len(values) < 2:
        return None
    return [int(v) for v in values]


def _slices_words(slices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs: list[list[int]] = []
    for k in slices:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def _gaps_words(gaps: list[float], uniform: bool) -> str:
    if not gaps:
        return "one slice"
    if uniform:
        return f"{len(gaps)} gaps of {np.mean(gaps):.4g} mm (even)"
    return f"uneven, {min(gaps):g} to {max(gaps):g} mm: {gaps}"


def run(args: argparse.Namespace) -> int:
    from ..io.volumes import read_labels, read_stack, volume_phases

    check_lax_names(args.lax_labels)
    if args.spacing is not None and not args.lax_labels:
        raise InputError(f"--spacing {args.spacing}: only used with --lax-labels (what of each plane a reconstruction "
                         "reaches); give LAX labels or leave it out")  # fmt: skip
    spacing = 1.0 if args.spacing is None else args.spacing
    out = output_file(args.out, [args.sax, args.sax_labels, *args.lax_labels]) if args.out else None
    phase = args.phase if args.phase is not None else 0  # phase 0 of a one-phase file is the file
    stack = read_stack(args.sax, labels_path=args.sax_labels, convention=args.label_convention, name="--sax",
                       phase=phase)  # fmt: skip
    times = stack.meta.get("trigger_times_ms") or [None] * volume_phases(args.sax, name="--sax")  # DICOM: read once
    on_offer = [{"phase": k, "trigger_time_ms": t} for k, t in enumerate(times)]
    frames = lax_frames(args.lax_labels, len(on_offer), f"--sax {args.sax}", args.lax_phase)
    if args.lax_phase is not None and (len(on_offer) > 1 or all(n == 1 for n in frames.values())):
        why = "with a cine the 4D file's frame is that of --phase" if len(on_offer) > 1 else \
            "no --lax-labels given" if not frames else "the --lax-labels are 3D"  # fmt: skip
        raise InputError(f"--lax-phase {args.lax_phase}: names the frame of a 4D --lax-labels file beside a 3D --sax "
                         f"(one phase); {why} (leave --lax-phase out)")  # fmt: skip
    frame = {p: (phase if len(on_offer) > 1 else args.lax_phase) if n > 1 else None for p, n in frames.items()}
    lax = {Path(p).name: read_labels(p, args.label_convention, f"--lax-labels {p}", frame[p]) for p in frames}
    info = summary(stack, on_offer, phase, lax, spacing)
    for p, n in frames.items():  # a 4D file: which of its frames was looked at
        if n > 1:
            info["lax"][Path(p).name].update({"frames": n, "frame": frame[p]})
    times = [p["trigger_time_ms"] for p in on_offer]
    (rows, cols), (sx, sy) = info["rows_cols"], info["pixel_spacing_mm"]
    print(f"{info['source']}: {info['slices']} slices of {rows} x {cols} pixels ({sx:g} x {sy:g} mm), "
          f"normal {info['normal_lps']}")  # fmt: skip
    print(f"orientation: {info['orientation']}")
    print(f"slice order: {info['slice_order']}")
    print(f"gaps: {_gaps_words(info['slice_gaps_mm'], info['uniform_gaps'])}"
          + (f"; slices shifted in-plane by up to {info['max_in_plane_shift_mm']:g} mm"
             if info["max_in_plane_shift_mm"] > 0.1 else ""))  # fmt: skip
    print(f"phases: {len(on_offer)}" + (f", trigger times (ms) {times}" if any(t is not None for t in times) else "")
          + f"; shown: phase {info['phase']}")  # fmt: skip
    if "labels" in info:
        present = [f"{name} on slices {_slices_words(k)}" for name, k in info["labels"].items() if k]
        absent = [name for name, k in info["labels"].items() if not k]
        print("labels: " + ("; ".join(present) or "none") + (f"; absent: {', '.join(absent)}" if absent else ""))
        print(f"apex along the normal: {info['apex_along_normal']} (heart area trend "
              f"{info['heart_area_trend_along_normal']}; < 0: shrinks along the normal)")  # fmt: skip
    else:
        print("labels: none given (--sax-labels; an ACDC HDF5 file carries its own)")
    for name, row in info.get("lax", {}).items():
        agreement = row.get("agreement_with_sax_labels")
        said = "" if agreement is None else ", agreement with the SAX labels where the planes cross " + ", ".join(
            f"{k} {'n/a' if d is None else f'{d:.2f}'}" for k, d in agreement["dice"].items())  # fmt: skip
        frame = f" (frame {row['frame']} of its {row['frames']})" if "frames" in row else ""
        print(f"{name}{frame}: {row['angle_to_sax_deg']:g} deg to the SAX slices, {row['pixels_in_sax_extent']} "
              f"pixels inside the reconstructed volume{said}")  # fmt: skip
    for warning in info["warnings"]:
        print(f"warning: {warning}")
    if out is not None:
        write_json_file(out, info)
        print(f"inspect: wrote {out}")
    return 0
