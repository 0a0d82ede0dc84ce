"""``cardiac-diffusion reconstruct``: fill a SAX stack to a 3D volume and check it on LAX planes."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

from ..errors import InputError, quality_warnings
from .common import (
    add_label_convention, add_progress_argument, check_lax_names, json_progress, lax_inputs, make_folder, output_folder,
    say_runs_on_cpu, stack_report,
)  # fmt: skip

#: the classical methods; with LAX labels the chosen method's LAX Dice is shown beside theirs
BASELINES = ("nearest", "linear", "shape")
METHODS = ("nearest", "linear", "shape", "dmcvr")
OUTPUTS = ("reconstruction_image.nii.gz", "reconstruction_labels.nii.gz", "geometry.json", "lax_dice.json",
           "lax_dice_baselines.json")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct a SAX stack into a 3D image and label volume")
    p.add_argument("--method", choices=METHODS, default="shape")
    p.add_argument("--sax", required=True, help="SAX stack: NIfTI/NRRD/MHA volume, a DICOM folder or an ACDC HDF5 file")
    p.add_argument("--sax-labels", help="labels of the SAX stack (same grid)")
    p.add_argument("--lax", nargs="*", default=[], help="LAX images (kept for reference; not needed for Dice)")
    p.add_argument("--lax-labels", nargs="*", default=[], help="LAX label images for the LAX Dice check")
    p.add_argument("--lax-phase", type=int, metavar="PHASE",
                   help="the cine phase 3D --lax-labels were drawn at (0-based, usually end-diastole): with several "
                        "--phase only that phase is checked (a 4D LAX label file, one frame per phase, checks each "
                        "phase against its own frame; beside a 3D --sax, without phases, --lax-phase names its "
                        "frame)")  # fmt: skip
    p.add_argument("--no-baselines", action="store_true",
                   help="with --lax-labels: check the chosen method only (by default the classical baselines "
                        "nearest, linear and shape are checked beside it: lax_dice_baselines.json)")  # fmt: skip
    p.add_argument("--spacing", type=float, default=1.0, help="through-plane spacing of the output, mm (default 1)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (dmcvr only)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (dmcvr only)")
    p.add_argument("--strength", type=float, help="dmcvr: fraction of the diffusion schedule inverted (default the model's, 1 = full)")
    p.add_argument("--model", help="dmcvr: model name or .safetensors (default the shipped one)")
    p.add_argument("--shape-prior", type=float,
                   help="dmcvr: weight 0..<1 of the shape-interpolated acquired labels in generated slices (default 0.4; 0 = network alone)")  # fmt: skip
    add_roughness_guard(p)
    p.add_argument("--phase", type=_phase,
                   help="cine input: cardiac phase index, 0-based (default 0: the first stored, not always ED; "
                        "`inspect` lists them); all, or a list such as 0,5,12: those phases in one run, one "
                        "sub-folder each (phase_00, ...) and reconstruct_frames.json")  # fmt: skip
    p.add_argument("--frame-labels", nargs="+", metavar="PHASE=FILE", default=[],
                   help="several phases: SAX labels of some of them, e.g. 0=ed_labels.nii.gz 9=es_labels.nii.gz")
    p.add_argument("--h5-spacing", type=float, nargs=2, metavar=("IN_PLANE", "GAP"),
                   help="ACDC HDF5 input: pixel size and slice gap in mm (the files carry none)")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    add_label_convention(p)
    add_progress_argument(p)
    p.set_defaults(func=run)


def _phase(text: str) -> int | str:
    """``--phase``: a number is one phase (as before); any other text (all, 0,5,12) is read by ``reconstruct_frames``."""
    try:
        return int(text)
    except ValueError:
        return text.strip()


def run(args: argparse.Namespace) -> int:
    if isinstance(args.phase, str) or getattr(args, "frame_labels", None):  # several phases in one run
        from .reconstruct_frames import run_frames

        return run_frames(args)
    check_options(args)
    out = output_folder(args.out, [args.sax, args.sax_labels, *args.lax, *args.lax_labels], OUTPUTS)
    from .lax_phases import lax_plan
    from .reconstruct_frames import _phase_count, remove_frames_run

    reader = lax = None
    if args.lax_labels:  # a 4D LAX label file: its frame of this phase (a SAX volume without phases: --lax-phase)
        count, _, reader = _phase_count(args)
        phase = args.phase or 0
        lax = lax_plan(args, [phase], count, single=True)(phase)
    earlier = (out / "geometry.json").is_file()  # before this run writes its own
    # a multi-phase run's outputs there would pass for this run's: removed after success, said before the closing line
    reconstruct_into(args, out, args.phase, json_progress(args), reader=reader, lax=lax,
                     tidy=lambda: remove_frames_run(out, earlier))  # fmt: skip
    return 0


def remove_earlier_outputs(out: Path, names, earlier_run: bool, run: str = "an earlier run",
                           why: str = "this run does not make it") -> None:  # fmt: skip
    """``out``'s files of these ``names``: removed when ``out`` held an earlier run's geometry.json (``earlier_run``;
    ``run`` and ``why`` say whose and why), else the user's own: kept, and said."""
    for name in names:
        if (out / name).is_file():
            if earlier_run:
                (out / name).unlink()
                print(f"removed {name} of {run} in {out} ({why})")
            else:  # no geometry.json: not a reconstruct run's folder, so the file is the user's
                print(f"warning: {out / name} is not from this run (kept; this run does not make it)")


def check_options(args: argparse.Namespace) -> None:
    """The options refused before any input is read (dmcvr's numbers: ``_check_dmcvr_numbers``)."""
    check_lax_names(args.lax_labels)
    if args.h5_spacing and not str(args.sax).lower().endswith((".h5", ".hdf5")):
        raise InputError(f"--h5-spacing: only for an ACDC HDF5 --sax (the other formats carry their spacing); got {args.sax}")
    dmcvr_only = [f"--{k.replace('_', '-')}" for k in ("steps", "strength", "model", "shape_prior", "roughness_guard")
                  if getattr(args, k) is not None]  # fmt: skip
    if dmcvr_only and args.method != "dmcvr":
        raise InputError(f"{', '.join(dmcvr_only)}: options of --method dmcvr; {args.method} has none (leave them out)")
    _check_dmcvr_numbers(args)
    for path in args.lax:
        if not Path(path).exists():
            raise InputError(f"--lax {path}: file not found")
    if getattr(args, "lax_phase", None) is not None and not args.lax_labels:
        raise InputError(f"--lax-phase {args.lax_phase}: names the phase --lax-labels were drawn at; give the LAX "
                         "labels too, or leave --lax-phase out")  # fmt: skip


def reconstruct_into(args: argparse.Namespace, out: Path, phase: int | None, progress=None, step=None,
                     shown: Path | None = None, reader=None, lax: dict | None = None, tidy=None) -> int:  # fmt: skip
    """Read ``args.sax`` at ``phase``, reconstruct it and write the outputs into ``out`` (checked by the caller).
    ``progress(fraction, text)``: dmcvr's steps; ``step(fraction, text)``: the stages (read, reconstruct, write) of
    a multi-phase run; ``shown``: the folder named in the closing line (default ``out``); ``reader``: the
    ``io.volumes.StackReader`` of ``args.sax`` that a multi-phase run keeps (the cine read once); ``lax``: the LAX
    labels to check against, keyed by file name (default: ``args.lax_labels`` read); ``tidy()``: run once the
    outputs are written, before the closing line (removals said before it)."""
    from ..io.volumes import StackReader, read_labels, write_image
    from ..reconstruction.lax_check import lax_dice_table, lax_overview
    from ..reconstruction.volume import planned_targets, reconstruct
    from ..utils.jsonfile import write_json

    step = step or (lambda fraction, text: None)
    reader = reader or StackReader(args.sax, "--sax", tuple(args.h5_spacing) if args.h5_spacing else None)
    stack = reader(phase, labels_path=args.sax_labels, convention=args.label_convention)
    if stack.labels is not None and not stack.labels.any():
        raise InputError(f"--sax-labels {args.sax_labels}: no slice holds a label (1 LV cavity, 2 LV myocardium, 3 RV "
                         "cavity); label the stack, or give no SAX labels (dmcvr then segments it itself)")  # fmt: skip
    planned_targets(stack, args.spacing, args.method)  # an output grid that does not fit in memory: refused now
    if lax is None:  # read (and checked) before the work
        lax = lax_inputs(args.lax_labels, args.label_convention, read_labels)
    report = stack_report(stack)
    if lax:  # a plane the volume will not reach is refused now; labels that disagree at the crossings are said
        overview = lax_overview(stack, lax, args.spacing)
        for name, row in overview.items():
            if row["pixels_in_sax_extent"] == 0:
                raise InputError(f"--lax-labels {name}: the LAX plane does not intersect the SAX volume; check that "
                                 "both come from the same patient and study (same frame of reference)")  # fmt: skip
            report["warnings"] += row["warnings"]
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    if args.method != "dmcvr":
        say_runs_on_cpu(args.device, f"--method {args.method}", "dmcvr")
    options = {}
    if args.method == "dmcvr":
        options = {"steps": args.steps, "device": args.device, "strength": args.strength, "model": args.model,
                   "shape_prior": args.shape_prior, "guard": args.roughness_guard}  # fmt: skip
    if progress is not None and args.method == "dmcvr":  # the other methods take a fraction of a second
        options["progress"] = _dmcvr_progress(progress)
    step(0.1, f"{stack.n} slices read; reconstructing with {args.method}")
    with quality_warnings() as said:  # a result that may be wrong: said, and kept in geometry.json
        result = reconstruct(stack, args.method, args.spacing, **{k: v for k, v in options.items() if v is not None})
    if lax and result.labels is None:
        said.append("no labels were reconstructed (no --sax-labels); the LAX check is skipped")
    for warning in said:
        print(f"warning: {warning}")
    report["warnings"] += said
    report.update(_provenance(stack, result, args, options))
    step(0.9, "writing the outputs")
    make_folder(out)
    earlier_run = (out / "geometry.json").is_file()  # the other outputs there are that run's, not the user's own
    write_image(result.image, out / "reconstruction_image.nii.gz")
    written = ["reconstruction_image.nii.gz"]
    if result.labels is not None:
        write_image(result.labels, out / "reconstruction_labels.nii.gz")
        written.append("reconstruction_labels.nii.gz")
    write_json(out / "geometry.json", report)
    written.append("geometry.json")
    if lax and result.labels is not None:
        table = lax_dice_table(result.labels, lax)
        write_json(out / "lax_dice.json", table)
        written.append("lax_dice.json")
        del result  # the baselines' volumes are made one at a time: the grid's memory check covers them
        written += _lax_baselines(stack, args, lax, table, out, earlier_run)
    # an earlier run's outputs that this run does not make would pass for its own
    remove_earlier_outputs(out, [name for name in OUTPUTS if name not in written], earlier_run)
    if tidy is not None:
        tidy()
    print(f"{args.method}: wrote {', '.join(written)} to {shown or out}")
    return 0


def _lax_baselines(stack, args: argparse.Namespace, lax: dict, table: dict, out: Path, earlier_run: bool) -> list[str]:
    """The classical baselines' LAX Dice beside ``table`` (the chosen method's) on the same grid and planes:
    written to lax_dice_baselines.json and printed side by side with a line per plane; the files written. An earlier
    run's lax_dice_baselines.json goes before their work: a run stopped during it (Ctrl-C, an error) must not leave
    that run's file beside this run's geometry.json and lax_dice.json."""
    from ..reconstruction.lax_check import (
        LINEAR_IS_NEAREST, compare_with_baselines, format_table, methods_lax_dice, side_by_side,
    )  # fmt: skip
    from ..utils.jsonfile import write_json

    if args.no_baselines or stack.labels is None:
        if stack.labels is None and not args.no_baselines:  # dmcvr labelled the stack itself
            print(f"note: no --sax-labels: the classical baselines make no labels, so the LAX check shows "
                  f"{args.method} alone")  # fmt: skip
        print(format_table(table))
        return []
    if earlier_run:
        (out / "lax_dice_baselines.json").unlink(missing_ok=True)
    baselines = methods_lax_dice(stack, [m for m in BASELINES if m != args.method], args.spacing, lax)[0]
    # nearest and linear are both in the table, as the method or as baselines: the note always applies
    write_json(out / "lax_dice_baselines.json", {"method": args.method, "baselines": baselines,
                                                 "notes": [LINEAR_IS_NEAREST]})  # fmt: skip
    print(f"LAX Dice of {args.method} beside the classical baselines (same grid and planes; lax_dice_baselines.json):")
    print(format_table(side_by_side(args.method, table, baselines)))
    for line in compare_with_baselines(args.method, table, baselines):
        print(line)
    print(f"note: {LINEAR_IS_NEAREST}")
    return ["lax_dice_baselines.json"]


def add_roughness_guard(parser: argparse.ArgumentParser) -> None:
    """``--roughness-guard RATIO|off`` (read by :func:`roughness_guard`; ``reconstruct`` and ``evaluate gap``)."""
    parser.add_argument("--roughness-guard", metavar="RATIO|off",
                        help="dmcvr: a generated crop rougher than RATIO times its acquired neighbours is decoded "
                             "again from the nearer one's code (default 1.2; off or inf: never)")  # fmt: skip


def roughness_guard(text: str | None, option: str = "--roughness-guard") -> float | None:
    """The guard ratio typed for ``option``: None when not given, inf for off/inf, else a number > 0; anything else
    is an InputError naming the option (before any work)."""
    if text is None:
        return None
    word = str(text).strip().lower()
    try:
        value = math.inf if word == "off" else float(word)
    except ValueError:
        value = math.nan
    if not value > 0:  # NaN, 0, negative, -inf, not a number
        raise InputError(f"{option} {text}: give a roughness ratio above 0 (default 1.2: a generated crop rougher than "
                         "1.2 times its acquired neighbours is decoded again), or off (or inf) to switch it off")  # fmt: skip
    return value


def guard_setting(value: float) -> float | str:
    """The guard as the JSON files record it: the ratio, or "off" (strict JSON has no Infinity)."""
    return "off" if math.isinf(value) else float(value)


def _dmcvr_progress(progress: Callable[[float, str], None]) -> Callable[[int, int], None]:
    """dmcvr's ``progress(k, total)`` as JSON progress lines; when the roughness guard re-decodes crops, total grows
    once (the fraction drops once, k never does) and the message says why."""
    planned: list[int] = []

    def say(k: int, total: int) -> None:
        planned[:] = planned or [total]
        why = "encode, then decode" if total == planned[0] else "rough crops decoded again: roughness guard"
        progress(k / total, f"dmcvr: DDIM step {k}/{total} ({why})")

    return say


def _check_dmcvr_numbers(args: argparse.Namespace) -> None:
    """dmcvr's --strength, --shape-prior, --roughness-guard and --steps refused by their option's name before any
    work (the library said 'dmcvr steps: 100000' after reading the input); --steps' limit is the model's schedule at
    --strength. ``args.roughness_guard`` becomes the ratio (inf: off) or stays None."""
    if args.strength is not None and not 0 < args.strength <= 1:
        raise InputError(f"--strength {args.strength}: give the fraction of the diffusion schedule inverted, "
                         "above 0 and at most 1 (1 = full inversion, the default)")  # fmt: skip
    if args.shape_prior is not None and not 0 <= args.shape_prior < 1:
        raise InputError(f"--shape-prior {args.shape_prior}: give a weight from 0 (the network alone) to below 1 "
                         "(default 0.4)")  # fmt: skip
    args.roughness_guard = roughness_guard(args.roughness_guard)
    if args.steps is None:
        return
    if args.steps < 1:
        raise InputError(f"--steps {args.steps}: give at least 1 DDIM step (default 25)")
    from ..dmcvr.reconstruction import DEFAULT_STRENGTH, load_dmcvr
    from ..utils.device import resolve_device

    net = load_dmcvr(args.model, str(resolve_device(args.device)))[0]  # kept for the run (load_dmcvr's cache)
    strength = DEFAULT_STRENGTH if args.strength is None else args.strength
    most = max(1, int(round(strength * len(net.alphas_cumprod))))
    if args.steps > most:
        raise InputError(f"--steps {args.steps}: at most {most} DDIM steps at strength {strength:g} (the model's "
                         "schedule); the default 25 is what the model was tuned for")  # fmt: skip


def _provenance(stack, result, args: argparse.Namespace, options: dict) -> dict:
    """What geometry.json records beside the stack's report: the input's frame, the method and its settings (dmcvr's
    defaults filled in), the model (dmcvr: name, version, sha256) and the output grid."""
    settings, model = {"spacing_mm": args.spacing}, {}
    if args.method == "dmcvr":
        from ..dmcvr.reconstruction import (
            DEFAULT_SHAPE_PRIOR, DEFAULT_STEPS, DEFAULT_STRENGTH, ROUGHNESS_GUARD, default_model_name,
        )  # fmt: skip
        from ..models.store import model_provenance

        defaults = {"steps": DEFAULT_STEPS, "strength": DEFAULT_STRENGTH, "shape_prior": DEFAULT_SHAPE_PRIOR,
                    "model": default_model_name(), "device": "auto"}  # fmt: skip
        settings.update({k: options[k] if options.get(k) is not None else v for k, v in defaults.items()})
        # a rough generated crop decoded again (docs/models/dmcvr.md): the ratio used, or "off"
        settings["roughness_guard"] = guard_setting(ROUGHNESS_GUARD if options.get("guard") is None else options["guard"])
        model = {"model": model_provenance(settings["model"])}
    image = result.image
    return {
        "input": {"path": stack.meta.get("path", str(args.sax)), "phase": args.phase or 0,
                  "first_slice_origin_lps": [round(float(v), 4) for v in stack.origins[0]],
                  **{f"{axis}_lps": [round(float(v), 6) for v in vector] for axis, vector in
                     (("row_direction", stack.row_dir), ("column_direction", stack.col_dir))}},  # fmt: skip
        "method": args.method,
        "settings": settings,
        **model,
        "output": {"size": list(image.GetSize()), "spacing_mm": [round(v, 6) for v in image.GetSpacing()],
                   "origin_lps": [round(v, 4) for v in image.GetOrigin()]},  # fmt: skip
    }
