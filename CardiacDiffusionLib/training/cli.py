"""``cardiac-diffusion train`` (also ``python -m CardiacDiffusionLib.training``, which torchrun can start)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ..errors import InputError
from .config import did_you_mean, load_config
from .progress import MODES

if TYPE_CHECKING:  # the runner imports torch: loaded on first training only
    from .runner import TrainResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow", nargs="?", help="a shipped recipe (see workflows.available(), e.g. dmcvr) or its YAML")
    p.add_argument("--data", help="training data folder (sets data.root of every stage)")
    p.add_argument("--stage", help="train only this stage of the workflow (a stage it starts from, {stage:NAME}, must be done)")
    p.add_argument("--config", help="YAML/JSON config (sections task, model, data, optim, schedule, train, device)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, loss.png, model.safetensors")
    p.add_argument("--progress", choices=MODES, default="bar",
                   help="bar (terminal), json (one JSON object per line) or none")  # fmt: skip
    p.add_argument("--device", help="auto|cpu|cuda|cuda:N|mps (overrides the config's device)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run found in --out")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.steps=1000 optim.lr=1e-4; STAGE:key=value for one stage")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model (resumes the run found in --out)")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except InputError as error:  # the runner reports its own; a config or workflow error is said here too
        if args.progress == "json" and not getattr(error, "reported", False):
            from .progress import Progress

            Progress("json").event("error", message=str(error).splitlines()[0])
        raise


def _run(args: argparse.Namespace) -> int:
    if args.workflow and "=" in args.workflow:  # argparse took the first override for the workflow
        args.overrides, args.workflow = [args.workflow, *args.overrides], None
    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    if args.workflow:
        return run_workflow(args, overrides)
    if not args.config and not any(o.startswith("task=") for o in overrides):
        raise InputError("train: give --config FILE or at least task=<name> (e.g. task=toy)")
    return _train_and_report(args, load_config(args.config, overrides), Path(args.out), "")


def _train_and_report(args: argparse.Namespace, config: dict, out: Path, stage: str) -> int:
    """Train one config into ``out``; 130 when cancelled (resumable), else 0. ``stage``: name for messages."""
    from .runner import train

    command = getattr(args, "training_command", None) or command_line(Path(sys.argv[0]).name, sys.argv[1:])
    result = train(None, config, out, progress=args.progress, resume=not args.no_resume, command=command)
    where = f" in stage {stage}" if stage else ""
    said = os.environ.get("RANK", "0") == "0"  # under torchrun rank 0 speaks for all
    if result.status == "cancelled":
        if said:
            print(f"cancelled{where} at step {result.step}; resume with the same command", file=sys.stderr)
        return 130
    if args.progress != "json" and said:
        print(_done_message(result, f"stage {stage}" if stage else ""), file=sys.stderr)
    return 0


def command_line(program: str, argv: list[str]) -> str:
    """The command line to record in the model, as it can be typed again (``python -m`` for this module, whose
    ``sys.argv[0]`` is ``__main__.py``)."""
    if program == "__main__.py":
        program = "python -m CardiacDiffusionLib.training"
    return " ".join([program, *map(shlex.quote, argv)])


def _done_message(result: TrainResult, who: str) -> str:
    """One line for a finished :class:`~.runner.TrainResult` (``who``: the stage, or empty)."""
    if result.already:
        return f"{who}{': ' if who else ''}already done at step {result.step}, nothing trained; model {result.model_path}"
    loss = "no loss logged" if result.loss is None else f"final loss {result.loss:.4g}"
    return f"{who}{' ' if who else ''}done: {result.step} steps, {loss}; model {result.model_path}"


def run_workflow(args: argparse.Namespace, overrides: list[str]) -> int:
    """Train every stage of a recipe in order, each into OUT/<stage> (OUT itself for one stage)."""
    from .task import get_task
    from .workflows import stage_configs

    if args.config:
        raise InputError("train: give a workflow name or --config, not both")
    stages = stage_configs(args.workflow, args.out, overrides, args.data)
    if args.stage and args.stage not in {s.name for s in stages}:
        raise InputError(f"train {args.workflow}: no stage {args.stage!r}{did_you_mean(args.stage, [s.name for s in stages])}; "
                         f"stages: {', '.join(s.name for s in stages)}")  # fmt: skip
    for stage in stages:  # every stage's settings and task checked before any of them trains
        try:
            get_task(load_config(stage.config)["task"])
        except InputError as error:
            raise InputError(f"train {args.workflow} stage {stage.name}: {error}") from None
    if args.stage:
        _check_earlier_stage(args, next(s for s in stages if s.name == args.stage), {s.name for s in stages})
    for stage in stages:
        if args.stage and stage.name != args.stage:
            continue
        out = Path(args.out) if len(stages) == 1 else Path(args.out) / stage.name
        if len(stages) > 1 and args.progress != "json":
            print(f"[train {args.workflow}] stage {stage.name} -> {out}", file=sys.stderr)
        code = _train_and_report(args, stage.config, out, stage.name)
        if code:
            return code
    return 0


def _check_earlier_stage(args: argparse.Namespace, stage, names: set[str]) -> None:
    """``--stage S`` whose ``train.init_from`` is an earlier stage's model that does not exist yet."""
    start = (stage.config.get("train") or {}).get("init_from")
    if not start:
        return
    path = Path(start)
    if path.name == "model.safetensors" and path.parent.name in names and not path.is_file():
        raise InputError(f"--stage {stage.name}: it starts from stage {path.parent.name}'s model, which is not there "
                         f"yet ({path}); train stage {path.parent.name} first (--stage {path.parent.name}, or no --stage)")  # fmt: skip


class Parser(argparse.ArgumentParser):
    """An argument parser (and its sub-parsers) whose own errors (a bad value or choice, a missing or unknown option)
    end in the project's one line ``error: ...``, exit code 2: the Slicer panels show the last stderr line."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ").replace("' -", "'-")  # the number lists' leading space: main.py
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting ``key=value`` overrides of commands that take them come after the options too."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            _chosen(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub-)sub-parser of the command that ``args`` ran, e.g. ``cardiac-diffusion evaluate gap``'s."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen(action.choices[getattr(args, action.dest)], args)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m CardiacDiffusionLib.training", description=__doc__.splitlines()[0])
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(parser, argv)
    args.training_command = command_line(parser.prog, argv)
    from ..utils.device import before_torch_loads, omp_threads

    omp_threads()
    before_torch_loads()  # as `cardiac-diffusion train`
    try:
        return run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: the runner stops at once (the checkpoint of the last save stays)
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for all
            print("cancelled", file=sys.stderr)
        return 130
