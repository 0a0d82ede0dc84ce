"""Surface distances between binary masks, in millimetres (medpy-0.5-compatible definition).

Surface voxels: ``mask XOR binary_erosion(mask, connectivity-1 structure)``. The distance of a surface
voxel of one mask to the other mask's surface comes from ``scipy.ndimage.distance_transform_edt`` with
``sampling=spacing``. The two distance transforms are computed once per pair (:func:`surface_distances`)
and every metric derives from the returned :class:`SurfaceDistances`.

``spacing`` is in the ARRAY's axis order. A ``sitk.GetArrayFromImage`` array is (z, y, x), so pass
``image.GetSpacing()[::-1]``, or use :func:`surface_distances_from_images`, which does that for you.

Empty masks: both empty -> every distance metric is nan; exactly one empty -> inf. No exceptions.

HD95 has two definitions in the field (see docs/METRICS.md); the project default is ``"pooled"``
(medpy, seg-metrics); ``"directed-max"`` is MONAI's and DeepMind's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from ..errors import InputError

if TYPE_CHECKING:  # imported where used: the array metrics run without SimpleITK
    import SimpleITK as sitk
from .overlap import as_mask_pair

HD95_VARIANTS = ("pooled", "directed-max")
DEFAULT_HD95_VARIANT = "pooled"


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from each surface voxel of one mask to the other mask's surface.

    When either mask is empty both arrays are empty and the metrics follow the empty-mask
    convention (nan when both are empty, inf when one is).
    """

    pred_to_ref: np.ndarray
    ref_to_pred: np.ndarray
    pred_empty: bool
    ref_empty: bool

    def _empty_value(self) -> float | None:
        if self.pred_empty and self.ref_empty:
            return float("nan")
        if self.pred_empty or self.ref_empty:
            return float("inf")
        return None

    def asd(self) -> float:
        """Directed average surface distance, mean of prediction -> reference (medpy ``asd``)."""
        empty = self._empty_value()
        return empty if empty is not None else float(self.pred_to_ref.mean())

    def assd(self) -> float:
        """Average symmetric surface distance: mean of both directions pooled (medpy 0.5 ``assd``, MONAI)."""
        empty = self._empty_value()
        return empty if empty is not None else float(np.concatenate([self.pred_to_ref, self.ref_to_pred]).mean())

    def hd(self) -> float:
        """Hausdorff distance: the larger of the two directed maxima."""
        empty = self._empty_value()
        return empty if empty is not None else float(max(self.pred_to_ref.max(), self.ref_to_pred.max()))

    def hd95(self, variant: str = DEFAULT_HD95_VARIANT) -> float:
        """95th-percentile Hausdorff distance (linear interpolation, as numpy and torch.quantile).

        ``"pooled"``: percentile of both directions pooled (medpy ``hd95``; project default).
        ``"directed-max"``: the larger of the two directed percentiles (MONAI ``percentile=95``, DeepMind).
        """
        if variant not in HD95_VARIANTS:
            raise InputError(f"hd95 variant {variant!r} is unknown; use one of {HD95_VARIANTS}")
        empty = self._empty_value()
        if empty is not None:
            return empty
        if variant == "pooled":
            return float(np.percentile(np.concatenate([self.pred_to_ref, self.ref_to_pred]), 95))
        return float(max(np.percentile(self.pred_to_ref, 95), np.percentile(self.ref_to_pred, 95)))


def _check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    spacing = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing.size != ndim or not np.all(np.isfinite(spacing)) or not np.all(spacing > 0):
        raise InputError(f"spacing {tuple(spacing.tolist())}: give {ndim} positive voxel sizes in mm, "
                         "in the array's axis order (for a SimpleITK array: GetSpacing()[::-1])")
    return spacing


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = generate_binary_structure(mask.ndim, 1)
    return mask ^ binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Both directed surface-distance arrays (mm) of two boolean masks; ``spacing`` in array axis order."""
    pred, ref = as_mask_pair(pred, ref)
    spacing = _check_spacing(spacing, pred.ndim)
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty or ref_empty:
        none = np.zeros(0)
        return SurfaceDistances(none, none, pred_empty, ref_empty)
    # Crop to the union's bounding box: voxels just outside it are background in both masks, as
    # binary_erosion assumes outside the array, so the surfaces and distances are unchanged and the
    # two distance transforms run on a much smaller array.
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(pred | ref))
    pred_surface, ref_surface = _surface(pred[box]), _surface(ref[box])
    to_ref = distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = distance_transform_edt(~pred_surface, sampling=spacing)
    return SurfaceDistances(to_ref[pred_surface], to_pred[ref_surface], False, False)


def surface_distances_from_images(pred: sitk.Image, ref: sitk.Image, label: int | None = None) -> SurfaceDistances:
    """:func:`surface_distances` of two SimpleITK label images on the same grid, with their own spacing.

    ``label``: compare ``image == label``; ``None`` compares all non-zero voxels.
    """
    for what in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        a, b = getattr(pred, what)(), getattr(ref, what)()
        if not np.allclose(a, b, atol=1e-5):
            raise InputError(f"label images: {what[3:].lower()} differs ({a} vs {b}); "
                             "resample the prediction onto the reference grid first")
    import SimpleITK as sitk

    arrays = [sitk.GetArrayFromImage(image) for image in (pred, ref)]
    masks = [a != 0 if label is None else a == label for a in arrays]
    return surface_distances(masks[0], masks[1], spacing=ref.GetSpacing()[::-1])


def asd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Directed average surface distance pred -> ref in mm (medpy ``asd``). Empty: nan both, inf one."""
    return surface_distances(pred, ref, spacing).asd()


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm, pooled mean (medpy 0.5 ``assd``). Empty: nan both, inf one."""
    return surface_distances(pred, ref, spacing).assd()


def hd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Hausdorff distance in mm between the mask surfaces. Empty: nan both, inf one."""
    return surface_distances(pred, ref, spacing).hd()


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], variant: str = DEFAULT_HD95_VARIANT) -> float:
    """95th-percentile Hausdorff distance in mm; ``variant`` "pooled" (default, medpy) or "directed-max"
    (MONAI, DeepMind). Empty: nan both, inf one."""
    if variant not in HD95_VARIANTS:
        raise InputError(f"hd95 variant {variant!r} is unknown; use one of {HD95_VARIANTS}")
    return surface_distances(pred, ref, spacing).hd95(variant)
