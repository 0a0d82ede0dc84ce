"""What dmcvr's ``--steps`` (DDIM steps each way) costs in quality: the gap protocol and the LAX phantom check per setting.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/eval_dmcvr_steps.py gap --data ../shared/data/acdc --patients 61-80 \
        --steps 5 10 15 25 50 --out docs/models/dmcvr_eval/gap_acdc_val_steps.json
    OMP_NUM_THREADS=1 .venv/bin/python scripts/eval_dmcvr_steps.py lax --seeds 0-3 --steps 1 2 3 5 10 25 \
        --out docs/models/dmcvr_eval/lax_phantoms_steps.json

``gap``: ``evaluate gap`` (reconstruction.gap.evaluate_gap, the CLI's code) with dmcvr at each setting, plus shape
once for reference. ``lax``: each MR phantom subject (scripts/eval_lax_phantoms.py; seeds 0-19 never trained on)
reconstructed to 1 mm by dmcvr, Dice on the 2ch/3ch/4ch planes, mean over subjects, views and labels (the 8 cells
of the README's table; ``_all_cells`` adds 2ch RV as scripts/eval_lax_phantoms.py's ``mean`` does). Both record per
setting the seconds per volume, CPU (``time.process_time``, this process: fair on a shared machine) and wall,
measured after the model is loaded once (not counted), and the QualityWarnings dmcvr gave.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from CardiacDiffusionLib.dmcvr.reconstruction import load_dmcvr
from CardiacDiffusionLib.errors import quality_warnings
from CardiacDiffusionLib.utils.jsonfile import write_json


class Clock:
    """CPU and wall seconds between calls of :meth:`lap`."""

    def __init__(self) -> None:
        self.cpu, self.wall, self.laps = time.process_time(), time.perf_counter(), []

    def lap(self, *_) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        self.laps.append((cpu - self.cpu, wall - self.wall))
        self.cpu, self.wall = cpu, wall

    def summary(self) -> dict:
        cpu, wall = np.array(self.laps).T
        return {"cpu_s_per_volume": round(float(cpu.mean()), 2), "wall_s_per_volume": round(float(wall.mean()), 2),
                "cpu_s_total": round(float(cpu.sum()), 1), "volumes_timed": len(self.laps)}  # fmt: skip


def run_gap(args: argparse.Namespace, save) -> dict:
    from CardiacDiffusionLib.cli.evaluate import parse_range
    from CardiacDiffusionLib.reconstruction.gap import acdc_stacks, evaluate_gap

    stacks = list(acdc_stacks([Path(d) for d in args.data], parse_range(args.patients), None))
    out = {}
    for method, steps in [("shape", None)] + [("dmcvr", s) for s in args.steps]:
        clock = Clock()
        options = {"dmcvr": {"steps": steps, "device": "cpu"}}
        row = evaluate_gap(stacks, [method], progress=clock.lap, options=options, per_volume=True)[method]
        warned = sorted({w for r in row["rows"] for w in r["warnings"]})
        key = method if steps is None else f"dmcvr steps {steps}"
        out[key] = {**{k: row[k] for k in ("dice", "psnr", "ssim", "volumes", "notes")}, **clock.summary(),
                    "warnings": warned, "rows": row["rows"]}  # fmt: skip
        print(f"{key}: Dice {row['dice']} PSNR {row['psnr']} SSIM {row['ssim']} {clock.summary()}", flush=True)
        save(out)
    return out


def run_lax(args: argparse.Namespace, save) -> dict:
    from CardiacDiffusionLib.phantoms.scanner import make_subject
    from CardiacDiffusionLib.reconstruction.lax_check import lax_dice
    from CardiacDiffusionLib.reconstruction.volume import reconstruct

    from eval_lax_phantoms import seed_list

    subjects = [make_subject(seed) for seed in seed_list(args.seeds)]
    out = {}
    for steps in args.steps:
        clock, cells, warned = Clock(), [], set()
        for subject in subjects:
            with quality_warnings() as said:
                result = reconstruct(subject.sax, "dmcvr", 1.0, steps=steps, device="cpu")
            clock.lap()
            warned |= set(said)
            cells.append({f"{view} {name}": dice for view, lab in subject.lax_labels.items()
                          for name, dice in lax_dice(result.labels, lab).items()})  # fmt: skip
        key = f"dmcvr steps {steps}"
        out[key] = {"lax_dice_mean": cell_mean(cells, lambda k: k != "2ch RV"),
                    "lax_dice_mean_all_cells": cell_mean(cells, lambda k: True), "per_subject": cells,
                    **clock.summary(), "warnings": sorted(warned)}  # fmt: skip
        print(f"{key}: LAX Dice {out[key]['lax_dice_mean']} (all cells {out[key]['lax_dice_mean_all_cells']}) "
              f"{clock.summary()}", flush=True)  # fmt: skip
        save(out)
    return out


def cell_mean(cells: list[dict], keep) -> float:
    """Mean Dice over subjects and the kept view-label cells with a Dice (``2ch RV``: no RV in the 2ch view, Dice 0
    when a method labels a stray RV pixel there, else undefined: left out of ``lax_dice_mean``, as in the README)."""
    values = [d for c in cells for k, d in c.items() if keep(k) and d is not None]
    return round(float(np.mean(values)), 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", choices=["gap", "lax"])
    p.add_argument("--data", nargs="+", default=["../shared/data/acdc"], help="gap: ACDC .h5 folder(s)")
    p.add_argument("--patients", default="61-70", help="gap: patient range")
    p.add_argument("--seeds", nargs="+", default=["0-3"], help="lax: phantom seeds or ranges")
    p.add_argument("--steps", nargs="+", type=int, default=[5, 10, 15, 25, 50])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    load_dmcvr(None, "cpu")  # loaded once, outside the timings
    settings = {"protocol": args.protocol, "steps": args.steps, "torch_threads": torch.get_num_threads(),
                **({"data": args.data, "patients": args.patients} if args.protocol == "gap" else {"seeds": args.seeds})}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def save(table: dict) -> None:  # after each setting: a long run stopped early keeps what it measured
        write_json(args.out, {"settings": settings, **table}, indent=1)

    (run_gap if args.protocol == "gap" else run_lax)(args, save)


if __name__ == "__main__":
    main()
