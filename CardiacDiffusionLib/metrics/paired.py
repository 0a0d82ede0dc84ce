"""Paired comparison of two methods scored on the same cases: is a difference more than case-to-case noise?

A table's means differ by a few hundredths (PSNR 16.34 vs 16.35 dB); whether that is a difference at all
is read from the per-case differences: their mean, a 95 % BCa bootstrap interval of it
(``scipy.stats.bootstrap``), wins / ties / losses and the Wilcoxon signed-rank p-value
(``scipy.stats.wilcoxon``, two-sided, zero differences dropped). Cases where either score is missing
(None, NaN, inf) are left out.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Sequence

import numpy as np

from ..errors import InputError

MIN_INTERVAL_CASES = 5  # below this the bootstrap interval is the range of the data (see docs/METRICS.md)


def paired_difference(a: Sequence[float | None], b: Sequence[float | None], seed: int = 0,
                      resamples: int = 10000) -> dict:  # fmt: skip
    """``a - b`` case by case: ``{"n", "mean", "ci95": [lo, hi], "wins", "ties", "losses", "wilcoxon_p"}``
    (wins: cases where a is higher). The interval is None for fewer than 5 cases or equal differences;
    the p-value is None for fewer than 3 cases or no non-zero difference. Every value is JSON-safe."""
    if len(a) != len(b):
        raise InputError(f"paired scores: {len(a)} against {len(b)} cases; both methods must score the same cases")
    for value in (*a, *b):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
            raise InputError(f"paired scores: {value!r} is not a number; give numbers (None for a missing score)")
    from scipy import stats  # imported here: 1 s that every command importing metrics/ would pay

    pairs = [(x, y) for x, y in zip(a, b) if _finite(x) and _finite(y)]
    diff = np.array([x - y for x, y in pairs], float)
    out = {"n": len(diff), "mean": _round(diff.mean()) if len(diff) else None, "ci95": None,
           "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum()),
           "wilcoxon_p": None}  # fmt: skip
    if len(diff) >= MIN_INTERVAL_CASES and np.ptp(diff) > 0:
        boot = stats.bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=resamples, method="BCa",
                               random_state=np.random.default_rng(seed))  # fmt: skip
        low, high = boot.confidence_interval.low, boot.confidence_interval.high
        if math.isfinite(low) and math.isfinite(high):  # BCa can fail on degenerate resamples: no interval
            out["ci95"] = [_round(low), _round(high)]
    if np.any(diff != 0) and len(diff) >= 3:
        p = float(stats.wilcoxon(diff).pvalue)
        out["wilcoxon_p"] = float(f"{p:.3g}") if math.isfinite(p) else None
    return out


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _round(value: float) -> float:
    return round(float(value), 4)
