"""The gap protocol: drop every other SAX slice, predict it from its kept neighbours, score it.

For each volume: keep slices 0, 2, 4, ...; every odd slice with a kept neighbour on both sides
is predicted by each method from the kept slices only. Scores per volume: Dice per label pooled
over the volume's dropped slices (one 3D Dice), PSNR over the dropped slices together and SSIM
averaged over them (intensities in [0, 1], data range 1). Scores are then averaged over volumes
(a label absent from a volume's dropped slices and its prediction is left out of the mean).

``kept_labels=False`` removes the kept slices' labels first (a clinician's unlabelled stack): only
methods that segment on their own (dmcvr) then give labels; the others are scored on images only.
"""

from __future__ import annotations

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
    """``{method: {"dice": {label: mean}, "psnr": mean, "ssim": mean, "volumes": n, "kept_labels": bool}}``;
    ``options[method]`` go to it; ``kept_labels=False``: the kept slices' labels are not given.
    ``per_volume=True`` adds ``"rows"``: each volume's scores and the QualityWarnings its method raised
    (which then are not shown as warnings)."""
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    for index, stack in enumerate(stacks):
        for method in methods:
            with quality_warnings() if per_volume else nullcontext([]) as said:
                scores = score_volume(stack, method, kept_labels, **(options or {}).get(method, {}))
            if scores is not None:
                per_method[method].append({"volume": stack.source, **scores, "warnings": said})
        if progress:
            progress(index, stack.source)
    out = {m: {**summarise(rows), "kept_labels": kept_labels} for m, rows in per_method.items()}
    if per_volume:
        for m, rows in per_method.items():
            out[m]["rows"] = [{**r, "dice": {k: _round(v) for k, v in r["dice"].items()}, "psnr": _round(r["psnr"]),
                               "ssim": _round(r["ssim"])} for r in rows]  # fmt: skip
    return out


def _round(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def summarise(rows: list[dict]) -> dict:
    def mean(values) -> float | None:
        values = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
        return round(float(values.mean()), 4) if len(values) else None

    return {
        "dice": {name: mean(r["dice"][name] for r in rows) for name in MR_LABELS.values()},
        "psnr": mean(r["psnr"] for r in rows),
        "ssim": mean(r["ssim"] for r in rows),
        "volumes": len(rows),
    }


def compare_methods(table: dict, method: str, against: Iterable[str]) -> dict:
    """Paired differences ``method - baseline`` per volume (metrics.paired) of an :func:`evaluate_gap` table made
    with ``per_volume=True``: ``{baseline: {"psnr": d, "ssim": d, "dice": {label: d}}}``."""
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise InputError("gap table: not a table of `evaluate gap --per-volume --out` ({method: {...}})")

    def rows(name: str) -> dict:
        if name not in table:
            raise InputError(f"gap table: no method {name!r}; it has {', '.join(sorted(table))}")
        if "rows" not in table[name]:
            raise InputError(f"gap table: {name!r} has no per-volume rows; make it with --per-volume")
        given = table[name]["rows"]
        if not isinstance(given, list) or not all(_is_row(r) for r in given):
            raise InputError(f"gap table: {name!r} rows are not `evaluate gap --per-volume` rows ({{\"volume\", "
                             "\"psnr\", \"ssim\", \"dice\": {LV, MYO, RV}}); make the table again")
        return {r["volume"]: r for r in given}

    mine, out = rows(method), {}
    for baseline in against:
        theirs = rows(baseline)
        volumes = sorted(set(mine) & set(theirs))
        if not volumes:
            raise InputError(f"gap table: {method!r} and {baseline!r} share no volume")

        def paired(get) -> dict:
            return paired_difference([get(mine[v]) for v in volumes], [get(theirs[v]) for v in volumes])

        out[baseline] = {"psnr": paired(lambda r: r["psnr"]), "ssim": paired(lambda r: r["ssim"]),
                         "dice": {k: paired(lambda r, k=k: r["dice"][k]) for k in MR_LABELS.values()}}  # fmt: skip
    return out


def _is_row(row) -> bool:
    def score(value) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    return (isinstance(row, dict) and isinstance(row.get("volume"), str) and score(row.get("psnr", ""))
            and score(row.get("ssim", "")) and isinstance(row.get("dice"), dict)
            and all(score(row["dice"].get(k, "")) for k in MR_LABELS.values()))  # fmt: skip


def acdc_stacks(folder: Path, patients: Iterable[int] | None = None, limit: int | None = None):
    """Labelled SAX stacks of an ACDC-layout folder (nominal spacing; the protocol is in slice units)."""
    from ..io.acdc import list_acdc, read_acdc

    wanted = None if patients is None else set(patients)
    entries = [e for e in list_acdc(folder) if wanted is None or e[0] in wanted]
    for patient, frame, path in entries[:limit]:
        yield read_acdc(path)
