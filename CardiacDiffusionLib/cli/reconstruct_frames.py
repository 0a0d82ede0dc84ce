"""``reconstruct --phase all|0,5,12``: several phases of a cine in one run (torch, MONAI and dmcvr's model load once; the
cine is read once: ``io.volumes.StackReader``).

The cine is a DICOM cine folder, a 4D NIfTI/NRRD/MHA file or a frames manifest (``--sax frames.json``:
``{"frames": [{"sax": FILE, "sax_labels": FILE}, ...]}``, one 3D file per frame, labels optional, paths relative to
the manifest; the Slicer job writes one). Each phase's usual outputs go to ``OUT/phase_KK/`` (``geometry.json``
records the phase), first written to a hidden ``OUT/.phase_KK.partial/`` and renamed when complete, so a cancelled
or failed run leaves no half-written frame folder; ``OUT/reconstruct_frames.json`` lists the frames done and the
run's status (running, complete, cancelled, failed), from the start (an earlier run's never speaks for this one); a
complete run removes an earlier run's frame folders of phases it did not make. SAX labels: ``--frame-labels
PHASE=FILE ...`` (some phases, e.g. ED and ES), a 4D ``--sax-labels`` file (every phase) or the manifest's. ``--progress json``: fractions over
all frames, rising, each line naming its phase (``frame``, ``phase`` and ``frame_progress`` keys beside them).

LAX labels are drawn at one phase: a 3D ``--lax-labels`` file is checked only at ``--lax-phase K`` (one of the run's
phases; required with several phases), a 4D one (a frame per cine phase) at every phase against its own frame (beside
a 3D --sax at the frame ``--lax-phase`` names: :func:`lax_phases.lax_plan`, which single-phase runs use too); the other phases get
no lax_dice.json, and reconstruct_frames.json (``lax_check``, each frame's ``lax_labels``) says which phase was
checked. A LAX plane that misses the SAX volume is refused before any phase's work (:func:`_lax_planes_reach`). Single- and multi-phase runs into one ``--out`` remove each other's earlier outputs
(:func:`remove_frames_run`, ``reconstruct.remove_earlier_outputs``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from ..errors import InputError
from .common import json_progress, make_folder, output_folder
from .lax_phases import LaxPlan, lax_plan

SUMMARY = "reconstruct_frames.json"
#: how the error of one frame starts (the Slicer job reads it back to name its own frame)
FRAME_PREFIX = "phase {phase} ({number} of {count} in this run)"


@dataclass(frozen=True)
class CineFrame:
    phase: int  # the cine's phase (DICOM phase, 4D index, manifest position), as geometry.json records it
    sax: str  # the file read
    read_phase: int | None  # the phase asked of that file (None: a 3D file of the manifest)
    sax_labels: str | None
    trigger_time_ms: float | None = None


def run_frames(args: argparse.Namespace) -> int:
    from ..utils.jsonfile import write_json
    from .reconstruct import OUTPUTS, check_options, reconstruct_into, remove_earlier_outputs

    if not isinstance(args.phase, str):
        raise InputError("--frame-labels: for several phases (--phase all or a list such as 0,9); with one --phase "
                         "give its labels as --sax-labels")  # fmt: skip
    if not Path(args.sax).expanduser().exists():
        raise InputError(f"--sax: file not found: {args.sax}")
    check_options(args)
    frames, reader, cine_length = cine_frames(args)
    lax_at = lax_plan(args, [f.phase for f in frames], cine_length)
    _lax_planes_reach(args, frames, reader, lax_at)  # now, not when the phase checked comes (minutes of work later)
    inputs = [args.sax, args.sax_labels, *args.lax, *args.lax_labels, *(f.sax for f in frames)]
    out = output_folder(args.out, [*inputs, *(f.sax_labels for f in frames)], [SUMMARY])
    width = max(2, len(str(max(f.phase for f in frames))))
    folders = [f"phase_{f.phase:0{width}d}" for f in frames]
    for folder in folders:  # a folder of the user's own is not replaced
        target = out / folder
        if target.exists() and not (target / "geometry.json").is_file() and (not target.is_dir() or any(target.iterdir())):
            raise InputError(f"--out {out}: {target} is not an earlier reconstruct run's frame folder (no geometry.json); "
                             "choose another --out, or move it away")  # fmt: skip
    emit, count = json_progress(args), len(frames)
    summary = {"input": str(args.sax), "method": args.method, "phases": [f.phase for f in frames], "status": "running",
               **({"lax_check": lax_at.record} if args.lax_labels else {}), "frames": []}  # fmt: skip
    for line in lax_at.said:
        print(line, flush=True)
    earlier_single = (out / "geometry.json").is_file()  # before anything is written
    make_folder(out)
    write_json(out / SUMMARY, summary)  # an earlier run's summary must not speak for this run while it works
    partial = None
    handler = _on_sigterm_cancel()
    try:
        for n, (frame, folder) in enumerate(zip(frames, folders)):
            name = FRAME_PREFIX.format(phase=frame.phase, number=n + 1, count=count)
            say = _frame_progress(emit, n, count, name, frame.phase)
            labels = f", SAX labels {frame.sax_labels}" if frame.sax_labels else ", no SAX labels"
            print(f"{name}: reconstructing with {args.method}{labels}", flush=True)
            say(0.0, f"reading{labels}")
            frame_args = argparse.Namespace(**vars(args))
            frame_args.sax, frame_args.sax_labels, frame_args.phase = frame.sax, frame.sax_labels, frame.phase
            partial = out / f".{folder}.partial"
            shutil.rmtree(partial, ignore_errors=True)  # a killed run's leftover
            lax = lax_at(frame.phase)
            frame_args.lax_labels = [path for path in args.lax_labels if Path(path).name in lax]
            try:
                reconstruct_into(frame_args, partial, frame.read_phase, _dmcvr_within(say) if emit else None, say,
                                 shown=out / folder, reader=reader, lax=lax)  # fmt: skip
            except InputError as error:
                raise InputError(f"{name}: {error}") from None
            shutil.rmtree(out / folder, ignore_errors=True)  # an earlier run's (checked above)
            partial.rename(out / folder)
            partial = None
            geometry = json.loads((out / folder / "geometry.json").read_text())
            summary["frames"].append({
                "phase": frame.phase, "folder": folder, "sax": frame.sax, "sax_labels": frame.sax_labels,
                **({"trigger_time_ms": frame.trigger_time_ms} if frame.trigger_time_ms is not None else {}),
                "labels_made": (out / folder / "reconstruction_labels.nii.gz").is_file(),
                **({"lax_labels": sorted(lax)} if args.lax_labels else {}),
                "warnings": geometry.get("warnings", []),
            })  # fmt: skip
            write_json(out / SUMMARY, summary)
            say(1.0, f"done: {folder}", folder=folder)
        summary["status"] = "complete"
        _remove_earlier_frames(out, folders)
        # a single-phase run's outputs beside these phase folders: removed as reconstruct removes its own
        remove_earlier_outputs(out, OUTPUTS, earlier_single, "an earlier single-phase run",
                               "this run writes phase folders")
        print(f"{args.method}: {count} phase{'s' * (count != 1)} written to {out} ({', '.join(folders)}; {SUMMARY})")
    except KeyboardInterrupt:
        summary["status"] = "cancelled"
        raise
    except BaseException as error:
        summary.update(status="failed", error=str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        write_json(out / SUMMARY, summary)
    return 0


def _remove_earlier_frames(out: Path, folders: list[str]) -> None:
    """An earlier run's frame folders (``phase_KK`` with its geometry.json) of phases this run did not make would
    pass for its own: removed, as ``reconstruct`` removes an earlier run's outputs it does not make."""
    for folder in sorted(out.glob("phase_*")):
        if folder.name not in folders and folder.name[6:].isdigit() and (folder / "geometry.json").is_file():
            shutil.rmtree(folder)
            print(f"removed {folder.name} of an earlier run in {out} (this run does not make it)")


def remove_frames_run(out: Path, earlier_run: bool) -> None:
    """A multi-phase run's outputs beside a single-phase run's: its frame folders (``phase_KK`` with a
    geometry.json) and its reconstruct_frames.json are removed when it is an earlier run's (``earlier_run``: ``out``
    held a single run's geometry.json, or the summary is a multi-phase run's), else kept, and said."""
    summary = out / SUMMARY
    ours = summary.is_file() and _is_summary(summary)
    for folder in sorted(out.glob("phase_*")):
        if folder.is_dir() and folder.name[6:].isdigit() and (folder / "geometry.json").is_file() and (ours or earlier_run):
            shutil.rmtree(folder)
            print(f"removed {folder.name} of an earlier multi-phase run in {out} (this run does not make it)")
        elif folder.name[6:].isdigit():
            print(f"warning: {folder} is not from this run (kept; this run does not make it)")
    if summary.is_file():
        if ours:
            summary.unlink()
            print(f"removed {SUMMARY} of an earlier multi-phase run in {out} (this run does not make it)")
        else:
            print(f"warning: {summary} is not from this run (kept; this run does not make it)")


def _is_summary(path: Path) -> bool:
    """Whether ``path`` is a multi-phase run's reconstruct_frames.json (not a file of the user's of that name)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and {"phases", "status", "frames"} <= data.keys()


def _lax_planes_reach(args: argparse.Namespace, frames: list[CineFrame], reader, plan: LaxPlan) -> None:
    """Each LAX plane meets the SAX volume of every phase it is checked at, else refused before any phase's work. A
    cine's phases share one geometry: the first checked phase's stack stands for all; a manifest's frames are read
    (without labels) one per geometry their file headers show (:func:`_geometry_key`)."""
    from ..io.volumes import StackReader
    from ..reconstruction.lax_check import lax_overview

    done: set = set()
    for n, frame in enumerate(frames):
        key = "cine" if reader is not None else _geometry_key(frame.sax)
        paths = [path for path, at, _ in plan.files if (at is None or at == frame.phase) and (key, path) not in done]
        if not paths:
            continue
        done.update((key, path) for path in paths)
        where = f"--sax {args.sax} (its phases share one geometry)" if reader is not None else \
            f"phase {frame.phase} ({frame.sax})"  # fmt: skip
        try:
            stack = (reader or StackReader(frame.sax, "--sax", tuple(args.h5_spacing) if args.h5_spacing else None))(
                frame.read_phase)
        except InputError as error:
            raise InputError(f"{FRAME_PREFIX.format(phase=frame.phase, number=n + 1, count=len(frames))}: {error}") from None
        names = {Path(path).name for path in paths}
        lax = {name: image for name, image in plan(frame.phase).items() if name in names}
        for name, row in lax_overview(stack, lax, args.spacing).items():
            if row["pixels_in_sax_extent"] == 0:
                raise InputError(f"--lax-labels {name}: the LAX plane does not intersect the SAX volume of {where}; "
                                 "check that both come from the same patient and study (same frame of reference); "
                                 "no phase was reconstructed")  # fmt: skip


def _geometry_key(path: str):
    """A 3D file's grid as its header says (size, spacing, origin, direction), read without its voxels; the path
    itself where no header says it (a DICOM folder)."""
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    try:
        info.ReadImageInformation()
    except RuntimeError:
        return str(path)
    return info.GetSize(), info.GetSpacing(), info.GetOrigin(), info.GetDirection()


def cine_frames(args: argparse.Namespace):
    """The frames ``--phase`` selects of ``--sax``, each with its SAX labels (bad selections and labels refused), the
    ``StackReader`` that reads their stacks, the cine read once (None: a manifest, one file per frame), and the
    cine's phase count."""
    sax, text = str(args.sax), args.phase
    manifest = sax.lower().endswith(".json")
    if manifest:
        entries = _manifest(Path(sax))
        if args.sax_labels or args.frame_labels:
            raise InputError(f"--sax {sax}: a frames manifest names each frame's labels (\"sax_labels\"); leave "
                             "--sax-labels and --frame-labels out")  # fmt: skip
        count, times, reader = len(entries), [None] * len(entries), None
    else:
        count, times, reader = _phase_count(args)
    phases = _selection(text, count, sax)
    given = _frame_labels(args.frame_labels, phases, text)
    if args.sax_labels:
        from ..io.volumes import volume_phases

        if args.frame_labels:
            raise InputError("--sax-labels and --frame-labels: give the labels one way (--frame-labels PHASE=FILE for "
                             "some phases, or a 4D --sax-labels file with every phase)")  # fmt: skip
        labelled = volume_phases(args.sax_labels, "--sax-labels")
        if labelled < 2 and len(phases) > 1:  # one phase (a 3D --sax and --phase all): its labels, as with --phase 0
            raise InputError(f"--sax-labels {args.sax_labels}: one 3D label volume for several phases; give the labels "
                             "of the phases they were drawn on as --frame-labels PHASE=FILE (e.g. 0=ed.nii.gz "
                             "9=es.nii.gz), or a 4D label file with every phase")  # fmt: skip
        if labelled > 1 and labelled != count:  # now, not at the first phase it lacks (after the others' work)
            raise InputError(f"--sax-labels {args.sax_labels}: {labelled} phases, but --sax {sax} has {count}; give "
                             "the 4D label file of this cine (one label volume per phase), or the labels of some "
                             "phases as --frame-labels PHASE=FILE")  # fmt: skip
    frames = []
    for k in phases:
        if manifest:
            entry = entries[k]
            frames.append(CineFrame(k, entry["sax"], None, entry.get("sax_labels")))
        else:
            frames.append(CineFrame(k, sax, k, given.get(k, args.sax_labels), times[k]))
    return frames, reader, count


def _phase_count(args: argparse.Namespace) -> tuple[int, list, object]:
    """Phases of a DICOM cine (with trigger times), a 4D file or (one) a 3D file or ACDC HDF5 file, and the
    ``StackReader`` of ``--sax`` (a DICOM folder is scanned once, here; a 4D file read on the first phase)."""
    from ..io.volumes import StackReader, volume_phases

    reader = StackReader(args.sax, "--sax", tuple(args.h5_spacing) if args.h5_spacing else None)
    if reader.series is not None:
        times = reader.series.trigger_times()
        return len(times), times, reader
    count = volume_phases(reader.path, "--sax")
    return count, [None] * count, reader


def _selection(text: str, count: int, sax: str) -> list[int]:
    has = f"--sax {sax} has phases 0..{count - 1}" if count > 1 else f"--sax {sax} holds one phase (0)"
    if text.lower() == "all":
        return list(range(count))
    try:
        phases = [int(t) for t in text.split(",")]
    except ValueError:
        raise InputError(f"--phase {text}: give one phase number, all, or a comma list such as 0,5,12; {has}") from None
    missing = sorted({k for k in phases if not 0 <= k < count})
    twice = sorted({k for k in phases if phases.count(k) > 1})
    if missing or twice:
        why = f"phase {', '.join(map(str, missing))} does not exist" if missing else \
            f"phase {', '.join(map(str, twice))} is given twice"  # fmt: skip
        raise InputError(f"--phase {text}: {why}; {has} (0-based; `inspect` lists them): give each once, or all")
    return phases


def _frame_labels(pairs: list[str], phases: list[int], text: str) -> dict[int, str]:
    given: dict[int, str] = {}
    for pair in pairs:
        phase, _, path = pair.partition("=")
        try:
            k = int(phase)
        except ValueError:
            k = None
        if k is None or not path:
            raise InputError(f"--frame-labels {pair}: give PHASE=FILE, e.g. 0=ed_labels.nii.gz")
        if k not in phases or k in given:
            raise InputError(f"--frame-labels {pair}: phase {k} is {'given twice' if k in given else 'not among'} "
                             f"--phase {text} ({', '.join(map(str, phases))}); label each reconstructed phase once")  # fmt: skip
        if not Path(path).exists():
            raise InputError(f"--frame-labels {pair}: file not found: {path}")
        given[k] = path
    return given


def _manifest(path: Path) -> list[dict]:
    form = '{"frames": [{"sax": FILE, "sax_labels": FILE (optional)}, ...]} (paths relative to the manifest)'
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # not Windows' ANSI code page; Notepad's BOM
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise InputError(f"--sax {path}: cannot read it as a frames manifest ({error}); give {form}") from None
    entries = data.get("frames") if isinstance(data, dict) else None
    good = isinstance(entries, list) and entries and all(
        isinstance(e, dict) and isinstance(e.get("sax"), str) and isinstance(e.get("sax_labels", ""), (str, type(None)))
        for e in entries)  # fmt: skip
    if not good:
        raise InputError(f"--sax {path}: not a frames manifest; give {form}")
    here = path.parent
    return [{"sax": _entry(here, e["sax"]), "sax_labels": _entry(here, e["sax_labels"]) if e.get("sax_labels") else None}
            for e in entries]  # fmt: skip


def _entry(here: Path, text: str) -> str:
    """A manifest entry as a path: relative to the manifest's folder; ``sub\\f.nii.gz`` (written on Windows) read as
    ``sub/f.nii.gz`` on macOS and Linux, where a backslash is a letter of a file name."""
    path = here / text
    if "\\" in text and not path.exists():
        path = here / PureWindowsPath(text).as_posix()
    return str(path)


def _frame_progress(emit, n: int, count: int, name: str, phase: int):
    """``say(fraction_of_this_frame, text, **extra)``: a JSON progress line over all frames, never going back."""
    last = [0.0]

    def say(fraction: float, text: str, **extra) -> None:
        last[0] = max(last[0], min(max(float(fraction), 0.0), 1.0))
        if emit is not None:
            emit((n + last[0]) / count, f"{name}: {text}", frame=n, phase=phase, frame_progress=round(last[0], 4),
                 **extra)  # fmt: skip

    return say


def _dmcvr_within(say):
    """dmcvr's step fractions into 0.1-0.9 of the frame (the stages take the rest)."""
    return lambda fraction, text: say(0.1 + 0.8 * fraction, text)


def _on_sigterm_cancel():
    """SIGTERM (the Slicer job's cancel) stops the run as Ctrl-C does; the previous handler (None: not set here)."""
    try:
        return signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread (a script calling run_frames): Ctrl-C only
        return None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
