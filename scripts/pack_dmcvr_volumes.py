"""Pack DMCVR's training volumes (ACDC training patients + MR phantoms) into one ``.npz``.

The pack lets a GPU server train without the raw data or SimpleITK: each volume is cropped to what
an augmented training crop can reach, intensities stored as float16. Train from it with
``data.packed=FILE data.root=null data.phantoms=0``::

    .venv/bin/python scripts/pack_dmcvr_volumes.py --data ../shared/data/acdc --out dmcvr_pack.npz
"""

from __future__ import annotations

import argparse

from CardiacDiffusionLib.dmcvr.data import acdc_volumes, pack_volumes, phantom_volumes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="ACDC-layout folder (patients 061-080 are left out)")
    p.add_argument("--phantoms", type=int, default=8, help="MR phantom subjects (2 phases each), as the preset")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--spacing-mm", type=float, default=2.25)
    p.add_argument("--rotate-deg", type=float, default=5.0, help="largest augmentation the pack serves (preset's)")
    p.add_argument("--scale", type=float, default=0.08)
    p.add_argument("--shift-mm", type=float, default=4.0)
    a = p.parse_args()
    volumes = acdc_volumes(a.data) + phantom_volumes(a.phantoms)
    path = pack_volumes(volumes, a.out, a.size, a.spacing_mm, a.rotate_deg, a.scale, a.shift_mm)
    print(f"{len(volumes)} volumes, {sum(len(v.pixels) for v in volumes)} slices -> {path} "
          f"({path.stat().st_size / 2**20:.1f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
