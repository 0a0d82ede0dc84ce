"""``cardiac-diffusion phantom``: write a seeded phantom (MR subject or CT) with its known answers."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..utils.jsonfile import write_json
from .common import keep_users_files, make_folder, output_folder


#: options of one kind of phantom only, with their defaults (given for the other kind: refused, not ignored)
MR_OPTIONS = {"phase": "ED", "shifts": 0.0, "gap": 10.0, "matrix": 128, "no_dicom": False}
CT_OPTIONS = {"size": 64, "no_contrast": False}
MAX_CT_SIZE = 256  # 0.625 mm voxels over the 160 mm field of view: finer than the CT it stands for


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write a seeded MR (SAX + LAX) or CT phantom with its truth")
    p.add_argument("--kind", choices=("mr", "ct"), default="mr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--phase", choices=("ED", "ES"), help="MR: cardiac phase (default ED)")
    p.add_argument("--shifts", type=float, help="MR: breath-hold shifts between SAX slices, mm (SD, 0-30, default 0)")
    p.add_argument("--gap", type=float, help="MR: distance between SAX slices, mm (above 0.5, at most 30, default 10)")
    p.add_argument("--matrix", type=int, help="MR: in-plane matrix of SAX and LAX images (8-1024, default 128)")
    p.add_argument("--no-dicom", action="store_true", default=None, help="MR: skip the SAX DICOM series")
    p.add_argument("--size", type=int, help=f"CT: voxels per side (160 mm field of view, 8-{MAX_CT_SIZE}, default 64)")
    p.add_argument("--no-contrast", action="store_true", default=None, help="CT: non-contrast HU")
    p.set_defaults(func=run)


def check_options(args: argparse.Namespace) -> None:
    """Refuse the other kind's options and out-of-range values by their option names; fill in the defaults."""
    mine, theirs = (MR_OPTIONS, CT_OPTIONS) if args.kind == "mr" else (CT_OPTIONS, MR_OPTIONS)
    given = [f"--{k.replace('_', '-')}" for k in theirs if getattr(args, k) is not None]
    if given:
        raise InputError(f"{', '.join(given)}: not an option of --kind {args.kind}; leave it out "
                         f"(or give --kind {'ct' if args.kind == 'mr' else 'mr'})")  # fmt: skip
    for key, default in mine.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: give a whole number >= 0")
    if args.kind == "mr":
        if not 0.5 < args.gap <= 30.0:  # also refuses NaN
            raise InputError(f"--gap {args.gap}: give the distance between SAX slices in mm, above 0.5 and at most 30")
        if not 0.0 <= args.shifts <= 30.0:
            raise InputError(f"--shifts {args.shifts}: give the breath-hold shifts' SD in mm, from 0 to 30")
        if not 8 <= args.matrix <= 1024:
            raise InputError(f"--matrix {args.matrix}: give the in-plane matrix in pixels, from 8 to 1024")
    elif not 8 <= args.size <= MAX_CT_SIZE:
        raise InputError(f"--size {args.size}: give the CT voxels per side, from 8 to {MAX_CT_SIZE}")


def output_names(args: argparse.Namespace) -> list[str]:
    """The files ``phantom`` writes in --out for these options (a pattern for the SAX DICOM series)."""
    if args.kind == "ct":
        return ["ct_image.nii.gz", "ct_labels.nii.gz", "truth.json"]
    lax = [f"lax_{view}_{what}" for view in ("2ch", "3ch", "4ch") for what in ("image", "labels")]
    names = [f"{name}.nii.gz" for name in ("sax_image", "sax_labels", "truth_labels", *lax)] + ["truth.json"]
    return names + ([] if args.no_dicom else ["dicom/sax/IM_*.dcm"])


def _earlier_phantom_run(out: Path) -> bool:
    """``out`` holds the truth.json of an earlier ``phantom`` run (MR or CT), by the keys only it writes together."""
    import json

    try:
        truth = json.loads((out / "truth.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(truth, dict) or not isinstance(truth.get("seed"), int):
        return False
    return {"modality", "size_xyz", "contrast"} <= truth.keys() or {"sax", "lax", "harmonics", "ef_target"} <= truth.keys()


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    check_options(args)
    out = output_folder(args.out)
    keep_users_files(out, output_names(args), _earlier_phantom_run, "phantom", "truth.json of a phantom run")
    if args.kind == "mr":
        from ..phantoms.scanner import make_subject, write_subject

        subject = make_subject(args.seed, args.phase, shifts_mm=args.shifts, gap_mm=args.gap, matrix=args.matrix)
        written = write_subject(subject, out, dicom=not args.no_dicom)
    else:
        from ..phantoms.ct import make_ct_phantom

        image, labels, truth = make_ct_phantom(args.seed, args.size, contrast=not args.no_contrast)
        make_folder(out)
        written = {"ct_image": out / "ct_image.nii.gz", "ct_labels": out / "ct_labels.nii.gz", "truth": out / "truth.json"}
        sitk.WriteImage(image, str(written["ct_image"]), useCompression=True)
        sitk.WriteImage(labels, str(written["ct_labels"]), useCompression=True)
        write_json(written["truth"], truth)
    for name, path in written.items():
        print(f"{name:>16}: {path}")
    return 0
