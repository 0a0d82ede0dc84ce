"""Progress of a long job: a tqdm bar on a terminal, or JSON lines on stdout for the Slicer panel.

JSON mode prints one object per line and nothing else on stdout (messages go to stderr):
``{"event": "progress", "stage": "train", "step": 10, "total": 100, "progress": 0.1,
"loss": 0.12, "eta_s": 3.2, "message": "train step 10/100"}``, plus ``start``, ``checkpoint``,
``validate``, ``after_step`` (a task's alternating update), ``cancelled``, ``done`` and ``error``
events (``progress`` and ``message`` keep the format of :mod:`CardiacDiffusionLib.slicer_adapter.process`).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from ..utils.jsonfile import dumps

MODES = ("bar", "json", "none")


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None  # JSON has no NaN/inf
    return value


class Progress:
    """Reports events in one of :data:`MODES`; ``enabled=False`` (DDP ranks > 0) reports nothing."""

    def __init__(self, mode: str = "bar", enabled: bool = True, stream: TextIO | None = None,
                 min_interval_s: float = 0.2):  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: use one of {MODES}")
        self.mode = mode if enabled else "none"
        self.stream = stream
        self.min_interval_s = min_interval_s
        self._bar = None
        self._t0 = self._last = 0.0
        self._first_step = 0

    def event(self, event: str, **fields: Any) -> None:
        """One event: a JSON line, or a message line under the bar."""
        if self.mode == "json":
            record = {"event": event, **{k: _clean(v) for k, v in fields.items()}}
            print(dumps(record, "progress line"), file=self.stream or sys.stdout, flush=True)
        elif self.mode == "bar" and event not in ("progress", "error"):  # an error is raised, and said by the caller
            text = fields.get("message") or " ".join(f"{k}={_clean(v)}" for k, v in fields.items())
            tqdm.write(f"{event}: {text}", file=sys.stderr)

    def start(self, total: int, initial: int = 0, stage: str = "train", **info: Any) -> None:
        self.total, self.stage = total, stage
        self._t0, self._last = time.perf_counter(), -math.inf  # the first step is always reported
        self._first_step = initial
        if self.mode == "bar":
            self._bar = tqdm(total=total, initial=initial, desc=stage, file=sys.stderr, dynamic_ncols=True)
        self.event("start", stage=stage, step=initial, total=total, **info)

    def eta_s(self, step: int) -> float | None:
        done = step - self._first_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._t0) / done * (self.total - step)

    def step(self, step: int, loss: float, **metrics: Any) -> None:
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        elif self.mode == "json" and (now - self._last >= self.min_interval_s or step >= self.total):
            self._last = now
            self.event("progress", stage=self.stage, step=step, total=self.total,
                       progress=step / self.total, loss=loss, eta_s=self.eta_s(step),
                       message=f"{self.stage} step {step}/{self.total}", **metrics)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
