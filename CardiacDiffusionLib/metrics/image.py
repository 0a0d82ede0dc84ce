"""Image similarity: PSNR and SSIM for 2D images and slice stacks (slice, row, col).

SSIM is ``skimage.metrics.structural_similarity`` with the setting of Wang et al. 2004 (IEEE TIP 13(4)):
an 11×11 Gaussian window of σ = 1.5 (``gaussian_weights=True, sigma=1.5``), population covariances
(``use_sample_covariance=False``), K1 = 0.01, K2 = 0.03 and the caller's ``data_range`` (give it: the
dtype-based default of skimage is wrong for float images). On a stack SSIM is the mean over slices
(2D SSIM per slice, not a 3D SSIM).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from ..errors import InputError

_SSIM_SETTINGS = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
_SSIM_WINDOW = 11  # what skimage derives from sigma = 1.5 (truncate 3.5)


def _check_pair(pred: np.ndarray, ref: np.ndarray, data_range: float, ndims: tuple[int, ...]) -> tuple:
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise InputError(f"images: prediction shape {pred.shape} differs from reference shape {ref.shape}; "
                         "compare images on the same grid")
    if pred.ndim not in ndims:
        raise InputError(f"images: got {pred.ndim} dimensions; give a 2D image or a (slice, row, col) stack")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(ref))):
        raise InputError("images: NaN or infinite intensities; replace them before scoring")
    if not (np.isfinite(data_range) and data_range > 0):
        raise InputError(f"data_range {data_range}: give the positive intensity range, e.g. 1.0 for [0, 1] images")
    return pred, ref


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float, per_slice: bool = False) -> float:
    """Peak signal-to-noise ratio 10·log10(data_range² / MSE) in dB; inf for identical images.

    On a stack the MSE is pooled over all pixels; ``per_slice=True`` gives the mean of per-slice PSNRs.
    """
    pred, ref = _check_pair(pred, ref, data_range, (1, 2, 3))
    if per_slice:
        if pred.ndim != 3:
            raise InputError("images: per_slice PSNR needs a (slice, row, col) stack")
        return float(np.mean([psnr(a, b, data_range) for a, b in zip(pred, ref)]))
    mse = float(np.mean((pred - ref) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim(pred: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """SSIM (Wang et al. 2004 setting) of two 2D images, or the mean over slices of two stacks."""
    pred, ref = _check_pair(pred, ref, data_range, (2, 3))
    if min(pred.shape[-2:]) < _SSIM_WINDOW:
        raise InputError(f"images: {pred.shape[-2:]} pixels per slice is smaller than the "
                         f"{_SSIM_WINDOW}×{_SSIM_WINDOW} SSIM window; give larger images")
    if pred.ndim == 3:
        return float(np.mean([ssim(a, b, data_range) for a, b in zip(pred, ref)]))
    return float(structural_similarity(pred, ref, data_range=data_range, **_SSIM_SETTINGS))
