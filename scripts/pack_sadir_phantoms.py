"""Pack SADIR training samples (MR phantoms as label-only SAX stacks) into one .npz, for training where
SimpleITK is not installed (a GPU server): ``data.packed=<file>`` in the sadir / sadir_unet presets.

    python scripts/pack_sadir_phantoms.py --phantoms 4000 --more 10000 4000 --workers 2 --out sadir_pack.npz
"""

from __future__ import annotations

import argparse
import time

from CardiacDiffusionLib.sadir.train import TEST_SEED, VAL_SEED, pack_samples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phantoms", type=int, default=160, help="seeds first..first+N-1 (ED even, ES odd)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--more", type=int, nargs=2, metavar=("FIRST", "COUNT"), help="another seed range")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    t0 = time.time()
    seeds = list(range(a.first_seed, a.first_seed + a.phantoms))
    seeds += list(range(a.more[0], a.more[0] + a.more[1])) if a.more else []
    if set(seeds) & set(range(VAL_SEED, VAL_SEED + 4)) or set(seeds) & set(range(TEST_SEED, TEST_SEED + 1000)):
        p.error(f"seeds overlap the validation ({VAL_SEED}..) or test ({TEST_SEED}..) phantoms")
    pack_samples(a.out, seeds, workers=a.workers)
    print(f"{len(seeds)} phantoms packed to {a.out} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
