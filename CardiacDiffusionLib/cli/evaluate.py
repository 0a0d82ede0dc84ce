"""``cardiac-diffusion evaluate gap``: the drop-every-other-slice protocol on ACDC-layout data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError
from ..reconstruction.gap import acdc_stacks, evaluate_gap


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluation protocols")
    protocols = p.add_subparsers(dest="protocol", required=True)
    g = protocols.add_parser("gap", help="drop every other SAX slice and predict it (ACDC-layout HDF5 folder)")
    g.add_argument("--data", required=True, help="folder of ACDC-layout .h5 volumes")
    g.add_argument("--methods", nargs="+", default=["nearest", "linear", "shape"])
    g.add_argument("--patients", help="patient range, e.g. 61-80 (default: all)")
    g.add_argument("--limit", type=int, help="evaluate at most this many volumes")
    g.add_argument("--out", help="write the JSON table here too")
    g.set_defaults(func=run_gap)


def parse_range(text: str | None):
    if not text:
        return None
    try:
        first, _, last = text.partition("-")
        return range(int(first), int(last or first) + 1)
    except ValueError:
        raise InputError(f"--patients {text!r}: expected a range like 61-80") from None


def run_gap(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not data.is_dir():
        raise InputError(f"--data {data}: folder not found")
    stacks = list(acdc_stacks(data, parse_range(args.patients), args.limit))
    if not stacks:
        raise InputError(f"--data {data}: no ACDC-layout .h5 volumes found (for the chosen patients)")
    print(f"gap protocol: {len(stacks)} volumes, methods {', '.join(args.methods)}", file=sys.stderr)
    table = evaluate_gap(stacks, args.methods)
    text = json.dumps(table, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0
