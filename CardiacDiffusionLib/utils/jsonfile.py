"""Strict JSON (RFC 8259) for every file and line the package writes: no NaN, no Infinity.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which jq, JavaScript and many readers refuse.
Here a non-finite number raises ``ValueError`` naming where it is, so a caller must encode it first: ``null``
plus a note or a count (an undefined Dice, an infinite PSNR), or a tagged value that reads back (checkpoints).
numpy scalars and arrays are written as numbers and lists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .durable import write_durably


def number_or_none(value: Any, digits: int | None = None) -> float | None:
    """``value`` as a float (rounded to ``digits``), or None when it is None, NaN or infinite."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value) if digits is None else round(float(value), digits)


def non_finite(data: Any, where: str = "") -> str | None:
    """Where in ``data`` the first NaN or infinity is (e.g. ``segments[16].tos_mean_ms = nan``), else None."""
    if isinstance(data, (float, np.floating)):
        return None if math.isfinite(data) else f"{where or 'the value'} = {float(data)}"
    if isinstance(data, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(data))
    elif isinstance(data, np.ndarray) and data.dtype.kind in "fc":
        bad = np.flatnonzero(~np.isfinite(data.ravel()))
        return f"{where}[{bad[0]}] = {data.ravel()[bad[0]]}" if bad.size else None
    else:
        return None
    return next((found for key, value in items if (found := non_finite(value, key))), None)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(data: Any, name: str = "JSON", **options: Any) -> str:
    """``data`` as strict JSON text (``json.dumps`` options, e.g. ``indent``); a ValueError naming the NaN or
    infinity when ``data`` holds one (``name``: the file or stream, for the message)."""
    try:
        return json.dumps(data, allow_nan=False, default=_plain, **options)
    except ValueError as error:
        where = non_finite(data)
        if where is None:
            raise
        raise ValueError(f"{name}: {where}; JSON has no NaN or infinity: encode it (null plus a note) before "
                         "writing") from error  # fmt: skip


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` to ``path`` as strict JSON with a final newline, whole or not at all (``utils.durable``: an
    interrupted run or a power loss never leaves half a file or replaces a good one)."""
    path = Path(path)
    text = dumps(data, path.name, indent=indent) + "\n"  # refused before anything is written
    return write_durably(path, text.encode())


def loads_strict(text: str | bytes) -> Any:
    """Parse ``text``, refusing NaN and Infinity (ValueError), as jq and JavaScript do."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON (RFC 8259): numbers or null only")

    return json.loads(text, parse_constant=refuse)
