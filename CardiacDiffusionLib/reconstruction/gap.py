"""The gap protocol: drop every other SAX slice, predict it from its kept neighbours, score it.

For each volume: keep slices 0, 2, 4, ...; every odd slice with a kept neighbour on both sides
is predicted by each method from the kept slices only. Scores per volume: Dice per label pooled
over the volume's dropped slices (one 3D Dice), PSNR over the dropped slices together and SSIM
averaged over them (intensities in [0, 1], data range 1). Scores are then averaged over volumes; each
mean says how many volumes are behind it (``"n"``). Left out of a mean, counted and said in ``"notes"``: a
label absent from a volume's dropped slices and its prediction (Dice undefined), and an infinite PSNR (the
dropped slices reproduced exactly: no cap, as skimage and the DMCVR code compute it; a cap such as 100 dB
would dominate a mean of 15-dB volumes). A volume too short to drop a slice (fewer than 3) is skipped and said.

``kept_labels=False`` removes the kept slices' labels first (a clinician's unlabelled stack): only
methods that segment on their own (dmcvr) then give labels; the others are scored on images only.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import InputError, quality_warnings
from ..geometry.stack import SliceStack
from ..labels import MR_LABELS
from ..metrics.image import psnr, ssim
from ..metrics.overlap import dice
from ..metrics.paired import paired_difference
from .baselines import get_method


def split_kept_dropped(n: int) -> tuple[np.ndarray, np.ndarray]:
    kept = np.arange(0, n, 2)
    dropped = np.arange(1, n - 1, 2) if n % 2 == 0 else np.arange(1, n, 2)
    dropped = dropped[dropped < kept[-1]]
    return kept, dropped


def score_volume(stack: SliceStack, method: str, kept_labels: bool = True, **options) -> dict | None:
    """Scores of one method on one labelled stack; None when the stack is too short."""
    kept, dropped = split_kept_dropped(stack.n)
    if len(dropped) == 0:
        return None
    given = stack.subset(kept) if kept_labels else stack.subset(kept).with_labels(None)
    images, labels = get_method(method)(given, stack.positions[dropped], **options)
    truth_images = stack.pixels[dropped]
    result = {
        "psnr": psnr(images, truth_images, data_range=1.0),
        "ssim": float(np.mean([ssim(a, b, data_range=1.0) for a, b in zip(images, truth_images)])),
        "dice": {},
    }
    for value, name in MR_LABELS.items():  # no labels predicted (none given to a method that needs them): None
        result["dice"][name] = None if labels is None else dice(labels == value, stack.labels[dropped] == value)
    return result


def evaluate_gap(
    stacks: Iterable[SliceStack],
    methods: list[str],
    progress: Callable[[int, str], None] | None = None,
    options: dict[str, dict] | None = None,
    kept_labels: bool = True,
    per_volume: bool = False,
) -> dict[str, dict]:
    """``{method: {"dice": {label: mean}, "psnr": mean, "ssim": mean, "volumes": n, "n": {...}, "notes": [...],
    "kept_labels": bool}}`` (:func:`summarise`); ``options[method]`` go to it; ``kept_labels=False``: the kept
    slices' labels are not given. ``per_volume=True`` adds ``"rows"``: each volume's scores and the
    QualityWarnings its method raised (which then are not shown as warnings). Volumes are named by file name,
    or by path where two share a name (the same patient from two folders), so no row hides another."""
    stacks = list(stacks)
    names = volume_names(stacks)
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    skipped: list[str] = []
    for index, (stack, name) in enumerate(zip(stacks, names)):
        for method in methods:
            with quality_warnings() if per_volume else nullcontext([]) as said:
                scores = score_volume(stack, method, kept_labels, **(options or {}).get(method, {}))
            if scores is not None:
                per_method[method].append({"volume": name, **scores, "warnings": said})
        if len(split_kept_dropped(stack.n)[1]) == 0:
            skipped.append(name)
        if progress:
            progress(index, name)
    out = {m: {**summarise(rows, skipped), "kept_labels": kept_labels} for m, rows in per_method.items()}
    if per_volume:
        for m, rows in per_method.items():
            out[m]["rows"] = [_row(r) for r in rows]
    return out


def volume_names(stacks: list[SliceStack]) -> list[str]:
    """Each stack's name in the table: its file name (``source``), or its path where names repeat."""
    sources = [s.source for s in stacks]
    names = [s.meta.get("path", s.source) if sources.count(s.source) > 1 else s.source for s in stacks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"gap protocol: the volume {repeated[0]} is given twice; give each volume once")
    return names


def _row(row: dict) -> dict:
    """A per-volume row as JSON: rounded scores, null for undefined ones; an infinite PSNR is null with
    ``"psnr_infinite": true`` (JSON has no infinity)."""
    out = {**row, "dice": {k: _round(v) for k, v in row["dice"].items()}, "psnr": _round(row["psnr"]),
           "ssim": _round(row["ssim"])}  # fmt: skip
    if row["psnr"] == np.inf:
        out["psnr_infinite"] = True
    return out


def _round(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def summarise(rows: list[dict], skipped: Iterable[str] = ()) -> dict:
    """Means over the volumes (``rows``) and ``"n"``, how many volumes are behind each; ``"notes"`` say in words
    what was left out and why: undefined Dice, infinite PSNR, ``skipped`` volumes."""

    def mean(values) -> tuple[float | None, int]:
        values = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
        return (round(float(values.mean()), 4) if len(values) else None), len(values)

    dice = {name: mean(r["dice"][name] for r in rows) for name in MR_LABELS.values()}
    psnr_mean, psnr_n = mean(r["psnr"] for r in rows)
    ssim_mean, ssim_n = mean(r["ssim"] for r in rows)
    exact = [r["volume"] for r in rows if r["psnr"] == np.inf]
    notes = []
    if exact:
        notes.append(f"PSNR: {len(exact)} of {len(rows)} volumes left out of the mean: their dropped slices were "
                     f"reproduced exactly (infinite PSNR): {', '.join(exact)}")  # fmt: skip
    for name, (_, n) in dice.items():
        given = sum(r["dice"][name] is not None for r in rows)  # None: no labels predicted at all
        if n < given:
            notes.append(f"Dice {name}: {given - n} of {len(rows)} volumes left out of the mean: {name} is in neither "
                         "their dropped slices nor the prediction (Dice undefined)")  # fmt: skip
    skipped = list(skipped)
    if skipped:
        notes.append(f"{len(skipped)} volumes skipped: fewer than 3 slices, none to drop: {', '.join(skipped)}")
    return {
        "dice": {name: m for name, (m, _) in dice.items()},
        "psnr": psnr_mean,
        "ssim": ssim_mean,
        "volumes": len(rows),
        "n": {"dice": {name: n for name, (_, n) in dice.items()}, "psnr": psnr_n, "ssim": ssim_n},
        "psnr_infinite": len(exact),
        "notes": notes,
    }


def compare_methods(table: dict, method: str, against: Iterable[str]) -> dict:
    """Paired differences ``method - baseline`` per volume (metrics.paired) of an :func:`evaluate_gap` table made
    with ``per_volume=True``: ``{baseline: {"volumes": paired, "unpaired": [...], "psnr": d, "ssim": d,
    "dice": {label: d}}}``. Rows are paired by volume name; a name given twice for one method is refused."""
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise InputError("gap table: not a table of `evaluate gap --per-volume --out` ({method: {...}})")
    methods = sorted(k for k in table if k not in TABLE_KEYS)

    def rows(name: str) -> dict:
        if name not in methods:
            raise InputError(f"gap table: no method {name!r}; it has {', '.join(methods) or 'none'}")
        if "rows" not in table[name]:
            raise InputError(f"gap table: {name!r} has no per-volume rows; make it with --per-volume")
        given = table[name]["rows"]
        if not isinstance(given, list) or not all(_is_row(r) for r in given):
            raise InputError(f"gap table: {name!r} rows are not `evaluate gap --per-volume` rows ({{\"volume\", "
                             "\"psnr\", \"ssim\", \"dice\": {LV, MYO, RV}}); make the table again")
        names = [r["volume"] for r in given]
        twice = sorted({v for v in names if names.count(v) > 1})
        if twice:
            raise InputError(f"gap table: {name!r} has {names.count(twice[0])} rows named {twice[0]!r} (the same file "
                             "from two folders?); rows are paired by name, so make the table again with `evaluate gap`, "
                             "which names such volumes by their path")  # fmt: skip
        return {r["volume"]: r for r in given}

    mine, out, against = rows(method), {}, list(against)
    for baseline in against:
        if against.count(baseline) > 1:
            raise InputError(f"--against: {baseline} is given twice; give each baseline once")
        if baseline == method:
            raise InputError(f"--against {baseline}: the method compared with itself; give other methods")
        theirs = rows(baseline)
        volumes = sorted(set(mine) & set(theirs))
        if not volumes:
            raise InputError(f"gap table: {method!r} and {baseline!r} share no volume")

        def paired(get) -> dict:
            return paired_difference([get(mine[v]) for v in volumes], [get(theirs[v]) for v in volumes])

        out[baseline] = {"volumes": len(volumes), "unpaired": sorted(set(mine) ^ set(theirs)),
                         "psnr": paired(lambda r: r["psnr"]), "ssim": paired(lambda r: r["ssim"]),
                         "dice": {k: paired(lambda r, k=k: r["dice"][k]) for k in MR_LABELS.values()}}  # fmt: skip
    return out


#: keys of a gap table that are not methods (``evaluate gap`` writes its inputs and settings there)
TABLE_KEYS = ("settings",)


def _is_row(row) -> bool:
    def score(value) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    return (isinstance(row, dict) and isinstance(row.get("volume"), str) and score(row.get("psnr", ""))
            and score(row.get("ssim", "")) and isinstance(row.get("dice"), dict)
            and all(score(row["dice"].get(k, "")) for k in MR_LABELS.values()))  # fmt: skip


def acdc_entries(folders, patients: Iterable[int] | None = None, limit: int | None = None) -> list:
    """The chosen ``(patient, frame, path)`` entries of one ACDC-layout folder or several, sorted."""
    from ..io.acdc import list_acdc

    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    wanted = None if patients is None else set(patients)
    return sorted(e for f in folders for e in list_acdc(f) if wanted is None or e[0] in wanted)[:limit]


def acdc_stacks(folders, patients: Iterable[int] | None = None, limit: int | None = None):
    """Labelled SAX stacks of one ACDC-layout folder or several (nominal spacing; the protocol is in slice
    units), in (patient, frame, path) order."""
    from ..io.acdc import read_acdc

    for patient, frame, path in acdc_entries(folders, patients, limit):
        yield read_acdc(path)


def unreadable_volumes(paths: Iterable[Path]) -> list[str]:
    """``"name (why)"`` of each ACDC HDF5 file that does not open (truncated, not HDF5) or lacks 3D ``image`` and
    ``label`` datasets of one shape: the header only, no voxel read, so every file is checked before any work."""
    import h5py

    bad = []
    paths = [Path(p) for p in paths]
    for path in paths:
        name = path.name if [p.name for p in paths].count(path.name) == 1 else str(path)  # one name, two folders
        try:
            with h5py.File(path, "r") as f:
                shapes = [f[k].shape if isinstance(f.get(k), h5py.Dataset) else None for k in ("image", "label")]
        except (OSError, RuntimeError, KeyError, ValueError) as error:  # h5py's cause: its last parentheses
            why = re.findall(r"\(([^()]*)\)", str(error))  # e.g. "truncated file: eof = ..."
            bad.append(f"{name} (not readable as HDF5: {why[-1] if why else error})")
            continue
        if None in shapes:
            missing = [k for k, v in zip(("image", "label"), shapes) if v is None]
            bad.append(f"{name} (has no {' or '.join(missing)} dataset)")
        elif len(shapes[0]) != 3 or shapes[0] != shapes[1]:
            bad.append(f"{name} (image {shapes[0]} and label {shapes[1]}: expected one (slices, H, W) shape)")
    return bad
