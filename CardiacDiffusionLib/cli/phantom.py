"""``cardiac-diffusion phantom``: write a seeded phantom (MR subject or CT) with its known answers."""

from __future__ import annotations

import argparse
import json

from ..errors import InputError
from .common import make_folder, output_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write a seeded MR (SAX + LAX) or CT phantom with its truth")
    p.add_argument("--kind", choices=("mr", "ct"), default="mr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--phase", choices=("ED", "ES"), default="ED", help="MR: cardiac phase")
    p.add_argument("--shifts", type=float, default=0.0, help="MR: breath-hold shifts between SAX slices, mm (SD)")
    p.add_argument("--gap", type=float, default=10.0, help="MR: distance between SAX slices, mm")
    p.add_argument("--matrix", type=int, default=128, help="MR: in-plane matrix of SAX and LAX images")
    p.add_argument("--no-dicom", action="store_true", help="MR: skip the SAX DICOM series")
    p.add_argument("--size", type=int, default=64, help="CT: voxels per side (160 mm field of view)")
    p.add_argument("--no-contrast", action="store_true", help="CT: non-contrast HU")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: give a whole number >= 0")
    out = output_folder(args.out)
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
        written["truth"].write_text(json.dumps(truth, indent=2))
    for name, path in written.items():
        print(f"{name:>16}: {path}")
    return 0
