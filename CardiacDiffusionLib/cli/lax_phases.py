"""Which LAX labels each reconstructed phase is checked against. LAX labels are drawn at one phase: a 3D file is
checked at ``--lax-phase`` (one of the run's phases; required with several), a 4D file (a frame per cine phase) at
every phase against its own frame, or beside a SAX volume without phases at the frame ``--lax-phase`` names. Used by
``reconstruct`` (one phase or several), ``lax-dice`` and ``inspect``; refusals come before any work."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


def lax_frames(paths: list[str], phases: int, sax: str, lax_phase: int | None) -> dict[str, int]:
    """Each --lax-labels file's frame count (1: a 3D file), refused before any work where its frames cannot be
    matched to the SAX input ``sax`` (words naming it) of ``phases`` cardiac phases: a 4D file of another frame
    count than the cine's, or beside a SAX volume without phases (``phases`` 1) unless ``lax_phase`` names the
    frame (one it holds)."""
    from ..io.volumes import volume_phases

    frames = {path: volume_phases(path, f"--lax-labels {path}") for path in paths}
    for path, n in frames.items():
        if n > 1 and phases > 1 and n != phases:
            raise InputError(f"--lax-labels {path}: {n} phases, but {sax} has {phases}; give a 4D LAX label file of "
                             "this cine (one frame per phase), or the 3D labels of the phase they were drawn at with "
                             "--lax-phase")  # fmt: skip
        if n > 1 and phases == 1 and lax_phase is None:
            raise InputError(f"--lax-labels {path}: 4D, {n} frames (one per cine phase), but {sax} holds one phase: "
                             f"which frame is its phase? name it with --lax-phase (0..{n - 1}), or give the 3D LAX "
                             "labels of that phase")  # fmt: skip
        if n > 1 and phases == 1 and not 0 <= lax_phase < n:
            raise InputError(f"--lax-phase {lax_phase}: --lax-labels {path} has frames 0..{n - 1}; name the frame of "
                             f"the phase {sax} holds")  # fmt: skip
    return frames


#: LaxPlan.files' frame of a 4D LAX label file of the cine: the frame of the phase checked
OWN = -1


@dataclass(frozen=True)
class LaxPlan:
    """Which LAX labels each phase of the run is checked against: ``plan(phase)`` -> {file name: labels image}."""

    read: object  # read(path, frame or None) -> the labels image
    files: tuple  # (path, phase checked (None: every phase), frame read: None (3D), OWN or a fixed frame)
    record: dict  # reconstruct_frames.json's "lax_check"
    said: tuple  # the log's lines about it

    def __call__(self, phase: int) -> dict:
        return {Path(path).name: self.read(path, phase if frame == OWN else frame) for path, at, frame in self.files
                if at is None or at == phase}  # fmt: skip


def lax_plan(args: argparse.Namespace, phases: list[int], count: int, single: bool = False) -> LaxPlan:
    """The LAX check of a run of ``phases`` of a ``count``-phase --sax (``single``: a run of one --phase), refused
    now (before any work) when it cannot be done: 3D labels at ``--lax-phase`` (needed with several phases, one of
    them), 4D labels a frame per phase of the cine, or, beside a SAX volume without phases, at the frame
    ``--lax-phase`` names (:func:`lax_frames`)."""
    from ..io.volumes import labels_reader

    text, given = args.phase, getattr(args, "lax_phase", None)
    sizes = lax_frames(args.lax_labels, count, f"--sax {args.sax}", given)
    flat = [path for path in args.lax_labels if sizes[path] == 1]
    fixed = count == 1 and len(flat) < len(sizes)  # 4D LAX labels beside a SAX volume: --lax-phase is their frame
    if given is not None and given not in phases and not fixed:
        if single:
            raise InputError(f"--lax-phase {given}: this run reconstructs phase {phases[0]} only (--phase); check it "
                             f"against LAX labels drawn at phase {phases[0]}, or reconstruct phase {given} (--phase "
                             f"{given}, or several: --phase {phases[0]},{given})")  # fmt: skip
        raise InputError(f"--lax-phase {given}: not among --phase {text} ({', '.join(map(str, phases))}); name the "
                         "phase the LAX labels were drawn at, and reconstruct it too")  # fmt: skip
    if flat and given is None and len(phases) > 1:
        raise InputError(f"--lax-labels {', '.join(flat)}: 3D LAX labels are drawn at one phase; name it with "
                         f"--lax-phase (one of {', '.join(map(str, phases))}, usually end-diastole), or give a 4D LAX "
                         "label file with a frame per cine phase")  # fmt: skip
    if given is not None and not flat and not fixed:
        raise InputError(f"--lax-phase {given}: for 3D LAX labels; the 4D --lax-labels check each phase against "
                         "its own frame (leave --lax-phase out)")  # fmt: skip
    at = given if given is not None and not fixed else phases[0]
    files = tuple((path, at, None) if path in flat else (path, None, given if fixed else OWN) for path in args.lax_labels)
    readers = {path: labels_reader(path, args.label_convention, f"--lax-labels {path}") for path in args.lax_labels}
    four = [Path(p).name for p in args.lax_labels if p not in flat]
    record = {"phase": at if flat else None, "labels": [Path(p).name for p in flat], "labels_4d": four,
              **({"labels_4d_frame": given} if fixed else {})}  # fmt: skip
    said = []
    if flat:
        said.append(f"LAX check of phase {at} only (--lax-phase: {', '.join(Path(p).name for p in flat)} drawn at it); "
                    "the other phases get no lax_dice.json")  # fmt: skip
    if four:
        said.append(f"LAX check against frame {given} of {', '.join(four)} (--lax-phase; --sax holds one phase)" if fixed
                    else f"LAX check of every phase against its own frame of {', '.join(four)}")  # fmt: skip
    plan = LaxPlan(lambda path, frame: readers[path](frame), files, record, tuple(said))
    for phase in {phases[0], at}:  # each file read (and checked) now, before the work
        plan(phase)
    return plan
