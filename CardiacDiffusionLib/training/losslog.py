"""The loss log (one JSON object per step in ``train_log.jsonl``) and its curve (``loss.png``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..utils.durable import fsync_file, replacing
from ..utils.jsonfile import dumps, number_or_none


class LossLog:
    """Append-only JSONL of training records; :meth:`truncate` drops steps redone after a resume."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except ValueError:
                if i < len(lines) - 1:  # the last line may be half written (the process was killed): dropped
                    raise InputError(f"{self.path}: line {i + 1} is not JSON; not a training log of this run (move "
                                     "it away, or choose another --out)") from None  # fmt: skip
        return records

    def truncate(self, step: int) -> None:
        """Keep the records of steps <= ``step`` (the checkpoint resumed from; records are in step order): the file
        is cut after the last of them in place, never rewritten (a rewrite cut short by a full disk or a kill would
        lose the records before the checkpoint too)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            f.seek(0)
            lines, keep, newline = f.read().splitlines(keepends=True), 0, True
            for i, line in enumerate(lines):
                if not line.strip():
                    keep += len(line)
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    if i < len(lines) - 1:
                        raise InputError(f"{self.path}: line {i + 1} is not a JSON record; not a training log of this "
                                         "run (move it away, or choose another --out)")  # fmt: skip
                    break  # the last line, half written by a killed process: dropped
                if record.get("step", 0) > step:
                    break
                keep, newline = keep + len(line), line.endswith(b"\n")
            f.truncate(keep)
            if not newline:  # a whole record whose newline the kill cut off
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, record: dict) -> None:
        """One record; a NaN or infinite value (a validation Dice of a label in neither image) is logged null."""
        with self.path.open("a") as f:
            f.write(_line(record))

    def plot(self, png: str | Path, title: str = "training loss") -> Path | None:
        """Loss per step (and a smoothed line; log scale when all positive) as a PNG; None without records."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure  # no pyplot: no global backend or state touched

        train = [r for r in self.records() if r.get("stage", "train") == "train" and r.get("loss") is not None]
        if not train:
            return None
        steps = np.array([r["step"] for r in train])
        loss = np.array([r["loss"] for r in train], dtype=float)
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
        if len(loss) >= 10:
            smooth = np.copy(loss)
            for i in range(1, len(loss)):  # exponential moving average
                smooth[i] = 0.9 * smooth[i - 1] + 0.1 * loss[i]
            ax.plot(steps, smooth, lw=1.5, label="smoothed (EMA 0.9)")
        if np.all(loss > 0):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        with replacing(png) as partial:  # a crash mid-write leaves the last whole picture
            fig.savefig(partial, format="png")
        return Path(png)

    def sync(self) -> None:
        """Flush the log to the disk (before a checkpoint: a power loss then keeps the records it resumes after)."""
        if self.path.is_file():
            fsync_file(self.path)


def _line(record: dict) -> str:
    return dumps({k: number_or_none(v) if isinstance(v, float) else v for k, v in record.items()}, "train_log.jsonl") + "\n"
