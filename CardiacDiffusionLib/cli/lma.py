"""``cardiac-diffusion lma``: late mechanical activation map from labelled SAX slices and strain or TOS."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import (
    add_label_convention, add_progress_argument, json_progress, keep_users_files, make_folder, output_folder,
    say_runs_on_cpu,
)  # fmt: skip

#: --sadir-refine at most this many steps (the library's default: 20; each a forward and backward pass, no progress)
MAX_REFINE = 1000


def _point(text: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not np.all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"{text!r}: give a point as x,y,z in LPS mm (finite numbers)")
    return np.array(values)


def _indices(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0-based slice indices as i,j,k") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lma", help="late mechanical activation: TOS painted on the 3D myocardium, AHA bullseye, lead segment"
    )
    p.add_argument("--slices", required=True,
                   help="SAX labels (NIfTI/NRRD/MHA), an ACDC HDF5 file (image + labels), or the SAX image "
                        "(also a DICOM folder) with --slice-labels")  # fmt: skip
    p.add_argument("--slice-labels", help="labels of --slices (same grid): 1 LV cavity, 2 myocardium, 3 RV cavity")
    p.add_argument("--phase", type=int,
                   help="cine/4D input: cardiac phase index of --slices and --slice-labels, 0-based (default 0: the "
                        "first stored, not always ED; `inspect` lists them)")  # fmt: skip
    p.add_argument("--h5-spacing", type=float, nargs=2, metavar=("IN_PLANE", "GAP"),
                   help="ACDC HDF5 --slices: pixel size and slice gap in mm (the files carry none)")  # fmt: skip
    tos = p.add_mutually_exclusive_group(required=True)
    tos.add_argument("--strain", help="mid-wall Ecc strain .npy (or one-array .npz) shaped (slices, 18, frames), "
                                      "fractions; rows base to apex")  # fmt: skip
    tos.add_argument("--tos-csv", help="TOS table: columns slice (0-based index in the stack's stored order, "
                                       "which may start at the apex), sector (1-18), tos_ms")  # fmt: skip
    p.add_argument("--frame-ms", type=float, default=17.0, help="strain frame interval, ms (default 17, cine DENSE)")
    p.add_argument("--tos-method", choices=("detector", "regressor"), default="detector",
                   help="TOS from strain: onset detector (default) or the shipped learned regressor")  # fmt: skip
    p.add_argument("--strain-slices", type=_indices,
                   help="stack slice of each strain row, e.g. 2,5,8 (default: slices holding myocardium)")  # fmt: skip
    p.add_argument("--rv-insertion", type=_point, nargs="+", metavar="X,Y,Z",
                   help="anterior RV insertion point(s), LPS mm, where the RV wall meets the septum on the LV's "
                        "epicardial border; one, or one per slice (default: found from the RV label). Far from the "
                        "myocardium or off the label's insertion: a QA flag in lma.json (docs/LMA.md)")  # fmt: skip
    p.add_argument("--base", type=_point, metavar="X,Y,Z", help="LV base point (default: estimated from the slices)")
    p.add_argument("--apex", type=_point, metavar="X,Y,Z", help="LV apex point (default: estimated from the slices)")
    p.add_argument("--scar", type=int, nargs="+", default=[], metavar="SEG",
                   help="AHA segments with scar (never suggested)")  # fmt: skip
    late = p.add_mutually_exclusive_group()
    late.add_argument("--late-percentile", type=float, default=75.0,
                      help="late region: TOS >= this percentile of the mesh's TOS (default 75)")  # fmt: skip
    late.add_argument("--late-threshold", type=float, help="late region: TOS >= this many ms (instead of a percentile)")
    p.add_argument("--method", choices=("shape", "sadir"), default="shape", help="3D myocardium reconstruction")
    p.add_argument("--sadir-model", help="--method sadir: model name or .safetensors (default: the shipped one)")
    p.add_argument("--device", default="auto", help="--method sadir: auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--sadir-refine", type=int, default=None, metavar="N",
                   help="--method sadir: test-time fit steps of v0 to the slices (default: the library's; 0: off)")
    p.add_argument("--spacing", type=float, default=1.0, help="through-plane spacing of the myocardium volume, mm")
    p.add_argument("--include-apical", action="store_true", help="let apical free-wall segments be suggested too")
    p.add_argument("--out", required=True, help="output folder")
    add_label_convention(p)
    add_progress_argument(p)
    p.set_defaults(func=run)


def read_labelled_stack(
    slices: str, slice_labels: str | None, convention: str, phase: int | None = None,
    h5_spacing: tuple[float, float] | None = None,
):  # fmt: skip
    """The SAX stack with labels (``phase`` of a cine): an image plus its labels, an ACDC HDF5 file (which
    holds both), or a label image alone (as image and labels)."""
    from ..io.volumes import read_stack

    h5 = Path(slices).suffix.lower() in (".h5", ".hdf5")
    if h5_spacing and not h5:
        raise InputError(f"--h5-spacing: only for an ACDC HDF5 --slices (the other formats carry their spacing); "
                         f"got {slices}")  # fmt: skip
    if slice_labels or h5:
        return read_stack(slices, labels_path=slice_labels, convention=convention, name="--slices", phase=phase,
                          spacing=h5_spacing)  # fmt: skip
    return _labels_alone(slices, convention, phase)


def _labels_alone(slices: str, convention: str, phase: int | None):
    """A label image given alone as --slices, as the stack's image and labels."""
    from ..geometry.stack import SliceStack
    from ..io.volumes import DICOM_SUFFIXES, note_missing_orientation, read_labels, volume_phases

    if Path(slices).is_dir() or Path(slices).suffix.lower() in DICOM_SUFFIXES:
        raise InputError("--slices: a DICOM series has no labels; add --slice-labels with the SAX labels")
    if phase not in (None, 0) and volume_phases(slices, name="--slices") == 1:
        raise InputError(f"--slices: {slices} is one 3D volume (one phase); phase {phase} does not exist in it, "
                         "leave out --phase")  # fmt: skip
    labels = read_labels(slices, convention=convention, name="--slices (labels)", phase=phase)
    stack = SliceStack.from_image(labels, labels=labels, source="--slices")
    note_missing_orientation(stack, slices, "--slices")
    return stack


def _earlier_lma_run(out: Path) -> bool:
    """``out`` holds the lma.json of an earlier ``lma`` run."""
    import json

    from ..activation.pipeline import WORKFLOW

    try:
        return json.loads((out / "lma.json").read_text()).get("workflow") == WORKFLOW
    except (OSError, ValueError, AttributeError):
        return False


def run(args: argparse.Namespace) -> int:
    from ..activation.bullseye import near_ties_text
    from ..activation.pipeline import OUTPUTS, check_in_view, run_lma, write_outputs
    from ..reconstruction.volume import planned_targets
    from ..activation.tos import load_strain

    if args.sadir_refine is not None and not 0 <= args.sadir_refine <= MAX_REFINE:  # more: hours with no progress
        raise InputError(f"--sadir-refine {args.sadir_refine}: give 0 (off) to {MAX_REFINE} test-time fit steps "
                         "(default 20)")  # fmt: skip
    if args.late_threshold is None and not 0 < args.late_percentile < 100:  # was said, unnamed, after the work
        raise InputError(f"--late-percentile {args.late_percentile}: give a percentile above 0 and below 100 "
                         "(default 75), or --late-threshold MS")  # fmt: skip
    output_folder(args.out, [args.slices, args.slice_labels, args.strain, args.tos_csv], OUTPUTS.values())
    keep_users_files(Path(args.out), OUTPUTS.values(), _earlier_lma_run, "lma", "lma.json of an lma run")
    stack = read_labelled_stack(args.slices, args.slice_labels, args.label_convention, args.phase,
                                tuple(args.h5_spacing) if args.h5_spacing else None)  # fmt: skip
    for option, point in (("--rv-insertion", args.rv_insertion), ("--base", args.base), ("--apex", args.apex)):
        if point is not None:  # a point outside the image: refused before any work
            check_in_view(stack, point, option)
    if args.method == "shape" and stack.n >= 2:  # a myocardium grid that does not fit in memory: refused now
        planned_targets(stack, args.spacing, "shape")
    if args.method != "sadir":
        say_runs_on_cpu(args.device, f"--method {args.method}", "sadir")
    report = json_progress(args)
    result = run_lma(
        stack,
        strain=load_strain(args.strain) if args.strain else None,
        tos_csv=args.tos_csv,
        frame_ms=args.frame_ms,
        tos_method=args.tos_method,
        strain_slices=args.strain_slices,
        rv_insertion=args.rv_insertion,
        base=args.base,
        apex=args.apex,
        scar=args.scar,
        late_percentile=None if args.late_threshold is not None else args.late_percentile,
        late_threshold_ms=args.late_threshold,
        method=args.method,
        spacing=args.spacing,
        include_apical=args.include_apical,
        sadir_options={"device": args.device, **({"model": args.sadir_model} if args.sadir_model else {}),
                       **({"refine_iters": args.sadir_refine} if args.sadir_refine is not None else {})}
        if args.method == "sadir" else None,
        progress=report,
    )
    result.lma["input"] = {"slices": args.slices, "slice_labels": args.slice_labels, "phase": args.phase or 0}
    if report:
        report(0.9, "writing the outputs")
    paths = write_outputs(result, make_folder(Path(args.out)))  # a folder that cannot be made: said as --out's
    for item in result.lma["qa"]:
        print(f"{item['severity']}: {item['message']}")
    lead = result.lead
    if lead["segment"] is not None:
        ties = f"; {near_ties_text(lead)}" if near_ties_text(lead) else ""
        print(f"decision support: suggested LV lead segment {lead['segment']} ({lead['name']}, "
              f"median TOS {lead['tos_median_ms']:.0f} ms{ties}); not a diagnosis")  # fmt: skip
    print(f"lma: wrote {', '.join(p.name for p in paths.values())} to {args.out}")
    if report:  # the bar ends full, as reconstruct's and sample's do
        report(1.0, "done")
    return 0
