"""Argument helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Iterable

from ..errors import InputError
from ..labels import CONVENTIONS
from ..utils.jsonfile import write_json


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` option as ``utils.device.prepare_device`` reads it."""
    parser.add_argument(
        "--device", default="auto",
        help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)",
    )  # fmt: skip


def say_runs_on_cpu(device: str | None, what: str, used_by: str) -> None:
    """``--device`` checked; one line when it asks for an accelerator that ``what`` does not use (no error: the
    Slicer panels pass their device to every method)."""
    from ..utils.device import device_name

    if device_name(device) not in ("auto", "cpu"):
        print(f"note: --device {device}: {what} runs on the CPU (only {used_by} uses the device)")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=("text", "json"), default="text",
                        help="json: also progress events on stdout, one JSON line each (the Slicer modules read them)")


def json_progress(args: argparse.Namespace) -> Callable[[float, str], None] | None:
    """``progress(fraction, message)`` printing the JSON progress lines of ``--progress json``, else None."""
    if getattr(args, "progress", "text") != "json":  # a Namespace built by a script may lack the option
        return None
    from ..slicer_adapter.process import emit_progress

    return emit_progress


def stack_report(stack) -> dict:
    """The stack's geometry report with the reader's warnings (e.g. no spacing stored) first: what the
    commands print and keep."""
    report = stack.geometry_report()
    report["warnings"] = [*stack.meta.get("warnings", []), *report["warnings"]]
    return report


def add_label_convention(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label-convention",
        choices=sorted(CONVENTIONS),
        default="project",
        help="label values of the inputs: project/mnms/ukbb (1=LV, 2=MYO, 3=RV) or acdc (1=RV, 2=MYO, 3=LV)",
    )


def check_lax_names(paths: list[str]) -> None:
    """Refuse two --lax-labels of one file name: the LAX check names each plane by it (lax_dice.json), so one
    plane would silently replace the other (e.g. 2ch/labels.nii.gz and 4ch/labels.nii.gz)."""
    seen: dict[str, str] = {}
    for path in paths:
        name = Path(path).name
        if name in seen:
            twice = "given twice" if Path(seen[name]).resolve() == Path(path).resolve() else f"both named {name}"
            raise InputError(f"--lax-labels {seen[name]} and {path}: {twice}; each LAX plane is named by its file name "
                             "(lax_dice.json): give each plane once, in files of different names (e.g. "
                             "lax_2ch_labels.nii.gz, lax_4ch_labels.nii.gz)")  # fmt: skip
        seen[name] = path


def lax_inputs(paths: list[str], convention: str, read_labels) -> dict:
    """LAX label images keyed by file name (as they appear in lax_dice.json)."""
    return {Path(p).name: read_labels(p, convention=convention, name=f"--lax-labels {p}") for p in paths}


def output_folder(path: str, inputs: Iterable[str | None] = (), writes: Iterable[str] = (), option: str = "--out") -> Path:
    """``path`` checked as the command's output folder before any work (made when written, :func:`make_folder`):
    an existing file there or above it, a place that cannot be written, or an output (``writes``: file
    names) that is one of ``inputs`` is refused."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out}: is a file; give a folder for the outputs")
    _check_writable_place(out, option)
    _refuse_overwriting(option, [out / name for name in writes], inputs)
    return out


def keep_users_files(out: Path, names: Iterable[str], earlier_run: Callable[[Path], bool], command: str,
                     marker: str) -> None:  # fmt: skip
    """Refuse an --out holding files named as ``command``'s outputs (``names``: file names or glob patterns) unless
    ``earlier_run(out)`` finds what ``marker`` names (e.g. "lma.json of an lma run") there: they are the user's,
    kept (an earlier run's are replaced)."""
    present = [name for name in names if any(out.glob(name))]
    if present and not earlier_run(out):
        raise InputError(f"--out {out}: holds {', '.join(present)}, not written by `{command}` (no {marker} beside "
                         "them); they are kept: choose a new or empty folder")  # fmt: skip


def make_folder(out: Path, option: str = "--out") -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{option} {out}: cannot create the folder ({e.strerror or e}); choose another place") from None
    return out


def output_file(path: str, inputs: Iterable[str | None] = (), option: str = "--out") -> Path:
    """``path`` checked as an output file before any work: not a folder, not an input, in a writable place."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{option} {target}: is a folder; give a file name, e.g. {target / 'result.json'}")
    _check_writable_place(target.parent, option)
    _refuse_overwriting(option, [target], inputs)
    return target


def write_json_file(path: str, data, inputs: Iterable[str | None] = (), option: str = "--out") -> None:
    """Write ``data`` as strict JSON to the file ``path`` (:func:`output_file`'s checks)."""
    target = output_file(path, inputs, option)
    make_folder(target.parent, option)
    try:
        write_json(target, data)
    except OSError as e:
        raise InputError(f"{option} {target}: cannot write it ({e.strerror or e}); choose another place") from None


def _check_writable_place(folder: Path, option: str) -> None:
    """The nearest existing folder at or above ``folder`` is a folder this process can write in."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {folder}: lies under the file {existing}; choose another place")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {folder}: cannot write in {existing} (permissions); choose another place")


def _refuse_overwriting(option: str, outputs: list[Path], inputs: Iterable[str | None]) -> None:
    given = {Path(p).resolve(): p for p in inputs if p}
    for output in outputs:
        if output.resolve() in given:
            raise InputError(f"{option}: writing {output} would overwrite the input {given[output.resolve()]}; "
                             "choose another output folder or file")  # fmt: skip
