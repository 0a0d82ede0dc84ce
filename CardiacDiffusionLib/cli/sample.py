"""``cardiac-diffusion sample``: new CT image + 8-label pairs from the latent diffusion model."""

from __future__ import annotations

import argparse
import shutil
import sys

from ..errors import InputError
from .common import add_device_argument, add_progress_argument, json_progress, make_folder, output_folder


#: --n at most this many pairs a run: 3.3 h at 50 DDIM steps on one CPU thread (1.2 s a pair). labels.json is rewritten
#: after each pair (a stopped run lists what it finished) and grows with each: measured 0.25 s a write at 10,000 pairs
#: (about 10 % of such a run), 2.4 s at 100,000 (more than sampling the pair)
MAX_PAIRS = 10_000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample synthetic CT image + label volume pairs (latent diffusion)")
    p.add_argument("--n", type=int, default=1, help=f"number of pairs (1-{MAX_PAIRS}, default 1)")
    p.add_argument("--seed", type=int, default=0, help="pair i starts from the noise of seed S+i (default 0)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps, i.e. network calls per batch (default 50)")
    p.add_argument("--model", default=None, help="registered LDM name or .safetensors (default the shipped one)")
    p.add_argument("--no-cleanup", action="store_true", help="write the raw argmax labels, no clean-up")
    p.add_argument("--out", required=True, help="output folder")
    add_progress_argument(p)
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..ldm.generate import (
        DEFAULT_MODEL, bytes_per_pair, check_sampling, earlier_run, iter_pairs, load_ldm, write_pairs,
    )  # fmt: skip
    from ..models.store import model_provenance
    from ..utils.device import prepare_device

    if args.n > MAX_PAIRS:  # before the seed's range, which depends on --n
        raise InputError(f"--n {args.n}: at most {MAX_PAIRS} pairs a run (about 3 h at 50 DDIM steps on one CPU "
                         f"thread); sample more in further runs, each with --seed {MAX_PAIRS} higher")  # fmt: skip
    check_sampling(args.n, args.seed, args.steps)  # before the model loads; its step limit after
    out = output_folder(args.out)
    earlier_run(out)  # a user's own labels.json or sample files in --out: refused before any work
    model = load_ldm(args.model or DEFAULT_MODEL, prepare_device(args.device))
    check_sampling(args.n, args.seed, args.steps, model.scheduler.num_train_timesteps)
    _check_space(out, args.n, bytes_per_pair(model))
    make_folder(out)
    meta = {"model": model_provenance(model), "seed": args.seed, "steps": args.steps, "cleanup": not args.no_cleanup}
    progress = json_progress(args)
    count = [0]

    def reported(pairs):  # each pair as it is written
        for pair in pairs:
            b, a = pair["noise_before"]["noisy_fraction"], pair["noise_after"]["noisy_fraction"]
            print(f"seed {pair['seed']}: noisy label voxels {100 * b:.2f} % -> {100 * a:.2f} % after clean-up", file=sys.stderr)
            yield pair
            count[0] += 1

    pairs = iter_pairs(model, args.n, args.seed, args.steps, cleanup=not args.no_cleanup, progress=progress)
    try:
        written = write_pairs(out, reported(pairs), float(model.config["spacing_mm"]), meta)
    except KeyboardInterrupt:
        kept = f"the {count[0]} finished pairs are in {out}, listed in labels.json" if count[0] else "nothing written"
        print(f"cancelled after {count[0]} of {args.n} pairs: {kept}", file=sys.stderr)
        raise
    print(f"sample: wrote {written_names(written)} to {out}", file=sys.stderr)  # stdout: JSON lines only (--progress)
    return 0


def written_names(paths: list, most: int = 7) -> str:
    """The file names, as reconstruct and lma say them; a long run's pairs as its first and last pair and a count."""
    names = [p.name for p in paths]
    if len(names) <= most:
        return ", ".join(names)
    pairs = (len(names) - 1) // 2  # two files a pair, then labels.json
    return ", ".join([*names[:2], "...", *names[-3:-1]]) + f" ({pairs} pairs), {names[-1]}"


def _check_space(out, n: int, per_pair: int) -> None:
    """Refuse a count whose files (uncompressed bound) would not fit on the output's disk."""
    place = out.absolute()
    while not place.exists():
        place = place.parent
    free, need = shutil.disk_usage(place).free, n * per_pair
    if need > free:
        raise InputError(f"--n {n}: {n} pairs may take up to {need / 1e9:.3g} GB and {place} has {free / 1e9:.3g} GB "
                         "free; ask for fewer pairs or choose another --out")  # fmt: skip
