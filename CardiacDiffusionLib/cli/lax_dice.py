"""``cardiac-diffusion lax-dice``: Dice of a label volume on LAX label images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .common import add_label_convention, check_lax_names, output_file, write_json_file
from .lax_phases import lax_frames


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lax-dice", help="Dice per label of a 3D label volume on LAX label images")
    p.add_argument("--labels", required=True, help="3D label volume, 1 LV cavity, 2 myocardium, 3 RV cavity "
                   "(e.g. reconstruction_labels.nii.gz; --label-convention is that of --lax-labels)")
    p.add_argument("--lax-labels", nargs="+", required=True, help="LAX label images")
    p.add_argument("--lax-phase", type=int, metavar="FRAME",
                   help="a 4D LAX label file (a frame per cine phase): the frame of the phase --labels is of")
    p.add_argument("--out", help="write the table as JSON here")
    add_label_convention(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.volumes import read_labels
    from ..reconstruction.lax_check import format_table, lax_dice_table

    check_lax_names(args.lax_labels)
    if args.out:  # refused before the work: a folder, an input, a place that cannot be written
        output_file(args.out, [args.labels, *args.lax_labels])
    try:
        volume = read_labels(args.labels, convention="project", name="--labels")
    except InputError as error:  # its hint, "pass --label-convention acdc", is for --lax-labels here
        if args.label_convention != "acdc" or "ACDC numbering" not in str(error):
            raise
        raise InputError(f"--labels {args.labels}: looks ACDC-numbered (3 = LV cavity), but the volume is read as 1 = "
                         "LV cavity, 2 = LV myocardium, 3 = RV cavity, as `reconstruct` writes it; --label-convention "
                         "applies to --lax-labels only: swap labels 1 and 3 of the volume") from None  # fmt: skip
    frames = lax_frames(args.lax_labels, 1, f"--labels {args.labels}", args.lax_phase)
    if args.lax_phase is not None and not any(n > 1 for n in frames.values()):
        raise InputError(f"--lax-phase {args.lax_phase}: picks the frame of a 4D LAX label file; the --lax-labels are "
                         "3D (leave --lax-phase out)")  # fmt: skip
    lax = {Path(p).name: read_labels(p, args.label_convention, f"--lax-labels {p}", args.lax_phase if n > 1 else None)
           for p, n in frames.items()}  # fmt: skip
    table = lax_dice_table(volume, lax)
    print(format_table(table))
    if args.out:
        write_json_file(args.out, table, inputs=[args.labels, *args.lax_labels])
    return 0
