"""Time to onset of circumferential shortening (TOS, ms) per sector: strain checks, the classical
onset detector, the learned regressor's entry point and clinician TOS tables (CSV).

Strain matrices are DENSE-like mid-wall Ecc (fractions, shortening negative) shaped
``(n_slices, 18, n_frames)``; sectors count from the anterior RV insertion in AHA order (septum
first), frame ``k`` (0-based) lies ``(k + 1) * frame_ms`` after the R wave, so no onset can be
measured before ``frame_ms``.
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError

N_SECTORS = 18
#: Physiological TOS range (ms after the R wave). Onset of shortening happens within systole:
#: normal hearts ~20-60 ms, LBBB late walls ~120-250 ms (Xing et al.'s DENSE data stay below ~250 ms
#: with 17 ms frames); past ~300 ms the LV is relaxing, so such a value is a typo or a failed fit.
TOS_RANGE_MS = (0.0, 300.0)
#: TOS all below this (ms) were written in seconds: a slice's latest sector is tens of ms after the R wave
SECONDS_LIKE_MS = 1.0
MIN_FRAMES = 8
#: TOS table columns, and the separators a header line may use (Excel writes ';' in European locales)
TOS_COLUMNS = ("slice", "sector", "tos_ms")
SEPARATORS = {",": "commas", ";": "semicolons", "\t": "tabs"}
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")


def frame_times(n_frames: int, frame_ms: float) -> np.ndarray:
    """Time after the R wave (ms) of each strain frame: the first frame is one frame in."""
    return frame_ms * (np.arange(n_frames) + 1.0)


def check_strain(strain, n_slices: int | None = None, name: str = "strain") -> np.ndarray:
    """``strain`` as float ``(n_slices, 18, n_frames)``, or an InputError naming what is wrong."""
    try:
        s = np.asarray(strain, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name}: not an array of numbers ({type(strain).__name__}); give strain fractions shaped "
                         f"(slices, {N_SECTORS} sectors, frames)") from None  # fmt: skip
    if s.ndim == 2 and s.shape[0] == N_SECTORS:
        s = s[None]  # one slice
    if s.ndim != 3 or s.shape[1] != N_SECTORS or s.shape[2] < MIN_FRAMES:
        raise InputError(
            f"{name}: expected strain matrices shaped (slices, {N_SECTORS} sectors, >= {MIN_FRAMES} frames), "
            f"got {s.shape}; give one mid-wall Ecc curve per sector, sectors from the anterior RV insertion"
        )
    if n_slices is not None and s.shape[0] != n_slices:
        raise InputError(
            f"{name}: {s.shape[0]} slices of strain for {n_slices} slices of the SAX stack; give one strain "
            "matrix per slice holding myocardium (or name the slices with strain_slices / --strain-slices)"
        )
    if not np.all(np.isfinite(s)):
        raise InputError(f"{name}: holds NaN or infinite values; fill or drop those sectors first")
    if np.abs(s).max() > 1.5:
        raise InputError(f"{name}: values up to {np.abs(s).max():.3g} look like percent; give strain as fractions")
    return s


def load_strain(path, name: str = "--strain") -> np.ndarray:
    """The strain array in a NumPy ``.npy`` file, or in an ``.npz`` file holding that one array."""
    file = Path(path)
    _require_file(file, name, "the strain .npy file")
    try:
        loaded = np.load(file, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return loaded
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise InputError(f"{name}: {file} is not a NumPy .npy/.npz array of numbers (a text or pickled file, or "
                         "cut off?); save the strain matrices with numpy.save") from None  # fmt: skip
    if len(arrays) != 1:
        raise InputError(f"{name}: {file} holds {len(arrays)} arrays {list(arrays)}; save the strain matrices "
                         "alone (numpy.save to .npy, or an .npz with one array)")  # fmt: skip
    return next(iter(arrays.values()))


def detect_tos(strain, frame_ms: float) -> np.ndarray:
    """Classical onset of shortening (ms) per curve of ``strain`` shaped ``(..., n_frames)``.

    After the highest point before peak shortening, find where the curve has fallen 15 % and 50 % of
    the way to the peak and extrapolate that line back to the starting level; clamped between that
    highest point and the 15 % crossing.
    """
    s = np.asarray(strain, float)
    t = frame_times(s.shape[-1], frame_ms)
    out = np.empty(s.shape[:-1])
    for index in np.ndindex(out.shape):
        curve = s[index]
        peak = int(np.argmin(curve))
        top = int(np.argmax(curve[: peak + 1]))
        amplitude = curve[top] - curve[peak]
        if amplitude <= 0:
            out[index] = t[0]
            continue
        t15, t50 = (_crossing(t, curve, top, peak, curve[top] - f * amplitude) for f in (0.15, 0.5))
        out[index] = np.clip(t15 - (t50 - t15) * 0.15 / 0.35, t[top], t15)
    return out


def _crossing(t, curve, start: int, stop: int, level: float) -> float:
    """First time in frames start..stop where the curve goes below level (linear interpolation)."""
    k = start + int(np.argmax(curve[start : stop + 1] < level))
    if k == start:
        return float(t[start])
    return float(t[k - 1] + (t[k] - t[k - 1]) * (curve[k - 1] - level) / (curve[k - 1] - curve[k]))


def tos_from_strain(strain, frame_ms: float = 17.0, method: str = "detector", model=None) -> np.ndarray:
    """TOS (ms) shaped ``(n_slices, 18)`` from checked strain matrices, by ``detector`` or ``regressor``."""
    if not (np.isfinite(frame_ms) and frame_ms > 0):
        raise InputError(f"frame_ms (--frame-ms): must be a positive number of ms, got {frame_ms}")
    s = check_strain(strain)
    if not np.isfinite(frame_ms * s.shape[-1]):  # the frame times overflow: NaN TOS, not a range to check
        raise InputError(f"frame_ms (--frame-ms): {frame_ms:g} ms puts the last of {s.shape[-1]} frames beyond any "
                         "time; give the strain frame interval in ms, e.g. 17 for cine DENSE")  # fmt: skip
    if method == "detector":
        return detect_tos(s, frame_ms)
    if method == "regressor":
        from .regressor import predict_tos

        return predict_tos(s, frame_ms, model=model)
    raise InputError(f"TOS method {method!r}: use 'detector' or 'regressor'")


def check_tos_range(tos, name: str = "TOS", measured: bool = False) -> None:
    """InputError when TOS values lie outside :data:`TOS_RANGE_MS`: any value a person typed, or most of a
    ``measured`` map (a few outliers there are the ``tos_out_of_range`` QA flag); values all below
    :data:`SECONDS_LIKE_MS` are seconds."""
    tos = np.asarray(tos, float)
    low, high = TOS_RANGE_MS
    check = "the frame interval (frame_ms, ms)" if measured else "the units and the table"
    if tos.size and np.nanmax(tos) < SECONDS_LIKE_MS:
        raise InputError(
            f"{name}: all values below {SECONDS_LIKE_MS:g} ms (max {np.nanmax(tos):g}) look like seconds; "
            f"TOS is ms after the R wave (0.03 s = 30 ms), check {check}"
        )
    bad = np.isfinite(tos) & ((tos < low) | (tos > high))
    if (bad.mean() > 0.5) if measured else bad.any():
        raise InputError(
            f"{name}: {int(bad.sum())} of {tos.size} value(s) outside the physiological range {low:g}-{high:g} ms "
            f"(e.g. {tos[bad].ravel()[0]:g}); TOS is ms after the R wave, check {check}"
        )


def read_tos_csv(path, name: str = "--tos-csv") -> dict[int, np.ndarray]:
    """``{slice index: TOS (18,)}`` from a CSV with columns ``slice, sector, tos_ms`` (others ignored).

    ``slice`` is the 0-based index of the slice in the SAX stack as stored (sorted along the slice
    normal, row x column direction): depending on the file, index 0 is basal or apical. ``sector`` is
    1..18 from the anterior RV insertion (septum first). Every slice listed needs all 18 sectors.
    Separators: commas, semicolons or tabs (from the header line); trailing empty columns and blank
    rows are ignored; a decimal comma (``120,5``) is read as ``120.5``.
    """
    path = Path(path)
    _require_file(path, name, "the TOS table's .csv file")
    table: dict[int, np.ndarray] = {}
    lines: dict[tuple[int, int], int] = {}
    for i, row in _tos_rows(path, name):
        k, sector, tos = _tos_row(row, path, name, i)
        if (k, sector) in lines:
            raise InputError(f"{name}: {path} line {i}: slice {k} sector {sector} is also on line "
                             f"{lines[k, sector]}; keep one row per slice and sector")  # fmt: skip
        lines[k, sector] = i
        table.setdefault(k, np.full(N_SECTORS, np.nan))[sector - 1] = tos
    if not table:
        raise InputError(f"{name}: {path} has a header but no rows; give one row per slice and sector")
    for k, values in table.items():
        if np.isnan(values).any():
            missing = (np.flatnonzero(np.isnan(values)) + 1).tolist()
            raise InputError(f"{name}: slice {k} lacks sectors {missing}; give all {N_SECTORS} sectors per slice")
        check_tos_range(values, f"{name} slice {k}")
    return dict(sorted(table.items()))


def _require_file(path: Path, name: str, what: str) -> None:
    if path.is_dir():
        raise InputError(f"{name}: {path} is a folder; give {what} itself")
    if not path.is_file():
        raise InputError(f"{name}: file not found: {path}")


def _tos_rows(path: Path, name: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: text}) of each non-blank row of the TOS table at ``path``."""
    try:
        text = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: Excel's UTF-8 byte order mark
        start = next((i for i, line in enumerate(text) if line.strip()), len(text))
        header, separator = _tos_header(text[start] if start < len(text) else "", path, name)
        rows = list(enumerate(csv.reader(text[start + 1 :], delimiter=separator), start=start + 2))
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{name}: {path} is not a text CSV ({error}); export the table as CSV (UTF-8)") from None
    for i, cells in rows:
        if not any(c.strip() for c in cells):
            continue  # a blank row (Excel writes ',,')
        stray = [c.strip() for j, c in enumerate(cells) if c.strip() and (j >= len(header) or not header[j])]
        if stray:
            raise InputError(
                f"{name}: {path} line {i}: value(s) {stray} in no named column ({len(cells)} cells for "
                f"{len(header)} header columns); a decimal comma in a comma-separated file? Use a decimal point"
                " or separate the columns with semicolons"
            )
        yield i, {h: (cells[j].strip() if j < len(cells) else "") for j, h in enumerate(header) if h}


def _tos_header(line: str, path: Path, name: str) -> tuple[list[str], str]:
    """(column names, lower case, and the separator) of the TOS table's header line."""
    for separator in SEPARATORS:
        header = [c.strip().lower() for c in next(csv.reader([line], delimiter=separator), [])]
        if set(TOS_COLUMNS) <= set(header):
            return header, separator
    raise InputError(f"{name}: {path} needs a header line with the columns {', '.join(TOS_COLUMNS)}, separated by "
                     f"{', '.join(SEPARATORS.values())}, and one row per slice and sector")  # fmt: skip


def _tos_row(row: dict[str, str], path: Path, name: str, i: int) -> tuple[int, int, float]:
    """(slice, sector, TOS ms) of one table row, checked."""
    text = row["tos_ms"]
    try:
        k, sector = int(row["slice"]), int(row["sector"])
        tos = float(text.replace(",", ".") if _DECIMAL_COMMA.fullmatch(text) else text)
    except ValueError:
        raise InputError(f"{name}: {path} line {i}: slice and sector must be integers, tos_ms a number "
                         f"(got {row['slice']!r}, {row['sector']!r}, {text!r})") from None  # fmt: skip
    if not 1 <= sector <= N_SECTORS or k < 0:
        raise InputError(f"{name}: {path} line {i}: sector must be 1..{N_SECTORS} and slice >= 0")
    if not np.isfinite(tos):
        raise InputError(f"{name}: {path} line {i}: tos_ms {text!r} is not a number; give every TOS in ms")
    return k, sector, tos


def write_tos_csv(path, tos_by_slice: dict[int, np.ndarray]) -> Path:
    """Write ``{slice: TOS (18,)}`` in the format :func:`read_tos_csv` reads."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["slice", "sector", "tos_ms"])
        for k, values in tos_by_slice.items():
            for s, v in enumerate(values, start=1):
                w.writerow([k, s, f"{float(v):.2f}"])
    return path
