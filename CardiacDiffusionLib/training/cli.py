"""``cardiac-diffusion train`` (also ``python -m CardiacDiffusionLib.training``, which torchrun can start)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..errors import InputError
from .progress import MODES
from .runner import train


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/JSON config (sections task, model, data, optim, schedule, train, device)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, loss.png, model.safetensors")
    p.add_argument("--progress", choices=MODES, default="bar",
                   help="bar (terminal), json (one JSON object per line) or none")  # fmt: skip
    p.add_argument("--device", help="auto|cpu|cuda|mps (overrides the config's device)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run found in --out")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.steps=1000 optim.lr=1e-4")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model (resumes the run found in --out)")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    if not args.config and not any(o.startswith("task=") for o in overrides):
        raise InputError("train: give --config FILE or at least task=<name> (e.g. task=toy)")
    from .config import load_config

    config = load_config(args.config, overrides)
    result = train(None, config, args.out, progress=args.progress, resume=not args.no_resume,
                   command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))  # fmt: skip
    if result.status == "cancelled":
        print(f"cancelled at step {result.step}; resume with the same command", file=sys.stderr)
        return 130
    if args.progress != "json":
        print(f"done: {result.step} steps, final loss {result.loss:.4g}; model {result.model_path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m CardiacDiffusionLib.training", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
