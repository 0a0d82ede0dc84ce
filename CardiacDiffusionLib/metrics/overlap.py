"""Overlap metrics of binary masks (any dimension): Dice, Jaccard, VOE, RVD, and a per-label table.

Definitions match medpy 0.5.2 ``dc``/``jc``/``ravd`` and SimpleITK ``LabelOverlapMeasuresImageFilter``.
Empty masks (see docs/METRICS.md): both empty -> nan (undefined, left out of averages); exactly one
empty -> Dice 0, Jaccard 0, VOE 100 %. No exception is raised for empty masks.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import InputError


def as_mask_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check two masks (same shape, boolean or 0/1 values) and return them as bool arrays."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise InputError(f"masks: prediction shape {pred.shape} differs from reference shape {ref.shape}; "
                         "resample one onto the other's grid first")
    if pred.ndim == 0:
        raise InputError("masks: got a scalar; give an array mask")
    for name, mask in (("prediction", pred), ("reference", ref)):
        if mask.dtype != bool and not np.all((mask == 0) | (mask == 1)):
            raise InputError(f"masks: {name} holds values other than 0/1; "
                             "pass a boolean mask such as labels == value")
    return pred.astype(bool, copy=False), ref.astype(bool, copy=False)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice 2|P∩R| / (|P|+|R|); nan when both masks are empty, 0 when exactly one is."""
    pred, ref = as_mask_pair(pred, ref)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    if total == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(pred & ref)) / total


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard |P∩R| / |P∪R|; nan when both masks are empty, 0 when exactly one is."""
    pred, ref = as_mask_pair(pred, ref)
    union = int(np.count_nonzero(pred | ref))
    if union == 0:
        return float("nan")
    return int(np.count_nonzero(pred & ref)) / union


def voe_percent(pred: np.ndarray, ref: np.ndarray) -> float:
    """Volumetric overlap error 100·(1 − Jaccard) in %; nan when both empty, 100 when exactly one is."""
    return 100.0 * (1.0 - jaccard(pred, ref))


def rvd_percent(pred: np.ndarray, ref: np.ndarray) -> float:
    """Signed relative volume difference 100·(|P| − |R|)/|R| in % (medpy ``ravd`` × 100).

    Positive when the prediction is larger. Both empty -> nan; reference empty only -> inf;
    prediction empty only -> −100.
    """
    pred, ref = as_mask_pair(pred, ref)
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if n_ref == 0:
        return float("nan") if n_pred == 0 else float("inf")
    return 100.0 * (n_pred - n_ref) / n_ref


def per_label(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    labels: dict[int, str],
    metric: Callable[[np.ndarray, np.ndarray], float],
) -> dict[str, float]:
    """``{name: metric(pred_labels == value, ref_labels == value)}`` for each ``value, name`` in ``labels``.

    ``metric`` takes two boolean masks, e.g. :func:`dice` or
    ``functools.partial(hd95, spacing=(10, 1.5, 1.5))``.
    """
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise InputError(f"label maps: prediction shape {pred_labels.shape} differs from reference shape "
                         f"{ref_labels.shape}; resample one onto the other's grid first")
    return {name: float(metric(pred_labels == value, ref_labels == value)) for value, name in labels.items()}
