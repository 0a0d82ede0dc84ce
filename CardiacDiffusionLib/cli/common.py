"""Argument helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..labels import CONVENTIONS


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` option as ``utils.device.prepare_device`` reads it."""
    parser.add_argument(
        "--device", default="auto",
        help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)",
    )  # fmt: skip


def add_label_convention(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label-convention",
        choices=sorted(CONVENTIONS),
        default="project",
        help="label values of the inputs: project/mnms/ukbb (1=LV, 2=MYO, 3=RV) or acdc (1=RV, 2=MYO, 3=LV)",
    )


def lax_inputs(paths: list[str], convention: str, read_labels) -> dict:
    """LAX label images keyed by file name (as they appear in lax_dice.json)."""
    return {Path(p).name: read_labels(p, convention=convention, name=f"--lax-labels {p}") for p in paths}
