"""``cardiac-diffusion``: the command line of CardiacDiffusionLib.

Each sub-command lives in its own module of this package exposing ``register(subparsers)``;
that function adds its parser and sets ``func`` (called with the parsed args; returns an exit code).
Bad input raises :class:`~CardiacDiffusionLib.errors.InputError`, printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

from ..errors import InputError, QualityWarning
from ..training.cli import Parser, command_line, parse
from ..utils.device import before_torch_loads, omp_threads

#: modules of this package that register sub-commands, in help order
COMMAND_MODULES = ("demo", "phantom", "inspect_input", "reconstruct", "lax_dice", "evaluate", "lma", "sample", "segment",
                   "train", "models")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cardiac-diffusion", description=__doc__.splitlines()[0])  # errors: one line, exit 2
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        module.register(sub)
    return parser


#: a point or list that starts with a minus sign, e.g. ``-10.5,-20,30`` (LPS mm)
_NUMBER_LIST = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)+$")


def _values_not_options(argv: list[str]) -> list[str]:
    """argparse takes any word starting with "-" for an option unless it is a single number, so a point on the
    patient's right (``--rv-insertion -10,-20,30``) would end in "expected at least one argument": such number
    lists get a leading space, which makes them values (the parsers strip it)."""
    return [f" {a}" if _NUMBER_LIST.match(a) else a for a in argv]


#: commands that never import torch (and `reconstruct` with a classical method): their CPU threads do not matter
NO_TORCH = ("phantom", "inspect", "lax-dice", "models")


def _loads_torch(args: argparse.Namespace) -> bool:
    return args.command not in NO_TORCH and not (args.command == "reconstruct" and args.method != "dmcvr")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(build_parser(), _values_not_options(argv))
    args.training_command = command_line("cardiac-diffusion", argv)  # what `train` records in its model: this command
    omp_threads()  # a bad OMP_NUM_THREADS said in one line, before torch loads (and OpenMP says it its way)
    if _loads_torch(args):  # the load is sampled for 0.1 s: not for the commands that never load torch
        before_torch_loads()  # fewer CPU threads when other work keeps cores busy; macOS: the Apple GPU's CPU fallback
    with warnings.catch_warnings():  # restores the process's warning display on return
        warnings.showwarning = _quality_warnings_as_lines(warnings.showwarning)
        return _run(args)


def _quality_warnings_as_lines(show):
    """A QualityWarning not collected by the command is printed ``warning: <message>``, not Python's
    file:line form; other warnings are shown by ``show``."""

    def showwarning(message, category, *rest, **kwargs):
        if issubclass(category, QualityWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, *rest, **kwargs)

    return showwarning


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"error: file not found: {error.filename or error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout stopped (`... | head`): nothing to say, and nothing to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:  # permissions, a folder where a file is expected, a full disk
        print(f"error: {error.filename or 'a file'}: {error.strerror or error}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:  # RuntimeError: torch's CPU/CUDA allocators
        said = str(error).splitlines()[0][:120] if str(error) else ""
        if isinstance(error, RuntimeError) and "allocate memory" not in str(error) and "out of memory" not in str(error):
            raise
        print(f"error: out of memory in `{args.command}`{f' ({said})' if said else ''}: use smaller inputs or settings "
              "(fewer slices, pairs, steps or a coarser --spacing), or --device cpu", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # `train` under torchrun: rank 0 speaks for all
            print("cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
