"""Classical through-plane interpolation of a SAX stack: nearest, linear and shape-based.

Every method predicts slices at target positions (mm along the stack normal) from the acquired
slices around each target, using the slices' true positions, so uneven gaps work. Slices that
are shifted in-plane against each other are first placed on the first slice's pixel grid at
their true position (see :func:`aligned_arrays`).

- ``nearest``: the nearer acquired slice (ties go to the lower slice).
- ``linear``: intensities linearly interpolated; labels by linear interpolation of the one-hot
  maps, which with two neighbours reduces to the nearer slice's labels.
- ``shape``: intensities linear; labels by shape-based interpolation (Raya & Udupa 1990):
  signed distance maps (mm) of each structure interpolated linearly, structure = SDF < 0.
  The LV myocardium is interpolated as the epicardial shape (cavity + wall) minus the
  interpolated cavity, so the ring stays a ring. Next to a slice without the structure it
  tapers to a point at that slice (see :func:`_end_sdf`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import InputError
from ..geometry.stack import SliceStack

#: A method maps (stack, target positions) to (images (m, rows, cols), labels (m, rows, cols) | None).
Method = Callable[[SliceStack, np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]

#: Project labels painted in this order by shape-based interpolation; each entry is
#: (label value painted, label values whose union is the interpolated shape).
MR_SHAPE_LAYERS: tuple[tuple[int, tuple[int, ...]], ...] = ((3, (3,)), (2, (1, 2)), (1, (1,)))


def aligned_arrays(stack: SliceStack) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels and labels of every slice on the first slice's in-plane grid.

    A slice whose origin is shifted in-plane by (dx, dy) mm is moved by that amount (linear
    for intensities, nearest for labels) so all slices share one pixel grid.
    """
    pixels = stack.pixels.copy()
    labels = None if stack.labels is None else stack.labels.copy()
    if not stack.has_shifts():
        return pixels, labels
    from scipy import ndimage  # here and in signed_distance: nearest/linear on a regular stack do without SciPy

    spacing = np.array(stack.pixel_spacing, float)
    for k, (dx, dy) in enumerate(stack.shifts):
        shift_rc = (dy / spacing[1], dx / spacing[0])  # (rows, cols)
        pixels[k] = ndimage.shift(stack.pixels[k], shift_rc, order=1, mode="nearest")
        if labels is not None:
            labels[k] = ndimage.shift(stack.labels[k], shift_rc, order=0, mode="constant", cval=0)
    return pixels, labels


def bracket(positions: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each target: index of the acquired slice below, above, and the weight of the one above."""
    positions = np.asarray(positions, float)
    targets = np.asarray(targets, float)
    tol = 1e-6
    if targets.min() < positions[0] - tol or targets.max() > positions[-1] + tol:
        raise InputError(
            f"target positions {targets.min():.2f}..{targets.max():.2f} mm lie outside the acquired slices "
            f"{positions[0]:.2f}..{positions[-1]:.2f} mm; slices are interpolated, not extrapolated"
        )
    upper = np.clip(np.searchsorted(positions, targets - tol, side="left"), 1, len(positions) - 1)
    lower = upper - 1
    gap = positions[upper] - positions[lower]
    # rounded so that positions equal up to float noise (a geometry written and read back) give the
    # same weights: at exactly 0.5 nearest and shape-based ties are then decided the same way
    weight = np.clip(np.round((targets - positions[lower]) / gap, 6), 0.0, 1.0)
    return lower, upper, weight


def _linear_images(pixels: np.ndarray, lower, upper, weight) -> np.ndarray:
    """``(1 - w) * pixels[lower] + w * pixels[upper]`` in float32, computed in place (the same products and sum,
    bit for bit, with two output-sized temporaries fewer)."""
    w = weight[:, None, None].astype(np.float32)
    out = pixels[lower].astype(np.result_type(pixels.dtype, np.float32), copy=False)  # a fresh copy either way
    out *= 1 - w
    above = pixels[upper].astype(out.dtype, copy=False)
    above *= w
    out += above
    return out


def nearest(stack: SliceStack, targets: np.ndarray):
    pixels, labels = aligned_arrays(stack)
    lower, upper, weight = bracket(stack.positions, targets)
    pick = np.where(weight <= 0.5, lower, upper)
    return pixels[pick], None if labels is None else labels[pick]


def linear(stack: SliceStack, targets: np.ndarray):
    pixels, labels = aligned_arrays(stack)
    lower, upper, weight = bracket(stack.positions, targets)
    images = _linear_images(pixels, lower, upper, weight)
    if labels is None:
        return images, None
    # One-hot maps interpolated linearly then argmax: with two neighbours each pixel holds at most
    # two classes weighted (1-w, w), so the nearer slice wins (ties: the lower slice).
    pick = np.where(weight <= 0.5, lower, upper)
    return images, labels[pick]


def signed_distance(mask: np.ndarray, spacing: tuple[float, float], empty_value: float) -> np.ndarray:
    """Signed distance (mm) of a 2D mask: negative inside, positive outside; ``empty_value`` if empty."""
    if not mask.any():
        return np.full(mask.shape, empty_value, dtype=np.float32)
    from scipy import ndimage

    sampling = (spacing[1], spacing[0])  # (rows, cols)
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return (outside - inside).astype(np.float32)


def _end_sdf(present: np.ndarray) -> np.ndarray:
    """SDF standing in for a slice where a structure is absent, next to one where it is present.

    The present slice's SDF plus twice its deepest inside distance (and a hair, so the empty
    slice stays empty): interpolating towards it shrinks the structure to a point half-way to the
    empty slice, where nearest-neighbour would cut it, instead of cutting it off one pixel past the
    present slice, which a constant "far outside" value does.
    """
    return present - 2 * present.min() + 1e-3


def shape(stack: SliceStack, targets: np.ndarray, layers=MR_SHAPE_LAYERS):
    pixels, labels = aligned_arrays(stack)
    lower, upper, weight = bracket(stack.positions, targets)
    images = _linear_images(pixels, lower, upper, weight)
    if labels is None:
        return images, None
    return images, shape_labels(labels, stack.positions, targets, stack.pixel_spacing, layers)


def shape_labels(labels: np.ndarray, positions: np.ndarray, targets: np.ndarray, pixel_spacing,
                 layers=MR_SHAPE_LAYERS) -> np.ndarray:  # fmt: skip
    """Shape-based interpolation of label slices already on one pixel grid (see :func:`aligned_arrays`).

    Works in the box around every labelled pixel widened by one pixel (:func:`label_box`): every distance the
    interpolation reads is the same there as in the full slice (the nearest pixel of the other kind lies inside
    the box) and outside it no structure can appear (see :func:`_candidates`)."""
    lower, upper, weight = bracket(positions, targets)
    out = np.zeros((len(targets), *labels.shape[1:]), dtype=np.uint8)
    needed = np.unique(np.concatenate([lower, upper]))
    box = label_box(labels[needed], sorted({v for _, members in layers for v in members}))
    if box is not None:
        out[(slice(None), *box)] = _shape_in_box(labels[(slice(None), *box)], lower, upper, weight, needed,
                                                 pixel_spacing, layers)  # fmt: skip
    return out


def label_box(labels: np.ndarray, values) -> tuple[slice, slice] | None:
    """(rows, cols) slices of the box holding every pixel of ``labels`` (n, rows, cols) in ``values`` on any slice,
    widened by one pixel where the image goes on; None when there is none. Inside it, the distance from a pixel to
    the nearest pixel inside a structure, or to the nearest pixel outside it, is the one in the full slice: the
    structure lies in the box, and a background pixel beyond the box is farther than the one in the widening ring
    on the way to it (each coordinate difference shrinks)."""
    footprint = np.isin(labels, values).any(axis=0)
    if not footprint.any():
        return None
    rows, cols = np.flatnonzero(footprint.any(axis=1)), np.flatnonzero(footprint.any(axis=0))
    return (slice(max(rows[0] - 1, 0), min(rows[-1] + 2, footprint.shape[0])),
            slice(max(cols[0] - 1, 0), min(cols[-1] + 2, footprint.shape[1])))  # fmt: skip


def _shape_in_box(labels, lower, upper, weight, needed, pixel_spacing, layers) -> np.ndarray:
    out = np.zeros((len(lower), *labels.shape[1:]), dtype=np.uint8)
    flat = out.reshape(len(lower), -1)
    for value, members in layers:
        masks = {k: np.isin(labels[k], members) for k in needed}
        sdf = {k: signed_distance(masks[k], pixel_spacing, np.inf) for k in needed}
        pairs = {}
        for i, (lo, up, w) in enumerate(zip(lower, upper, weight)):
            if (lo, up) not in pairs:
                pairs[lo, up] = _candidates(masks, sdf, lo, up)
            where, below, above = pairs[lo, up]
            flat[i, where[((1 - w) * below + w * above) < 0]] = value
    return out


def _candidates(masks: dict, sdf: dict, lo: int, up: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat pixel indices, SDF below, SDF above there) of the pixels inside the structure on slice ``lo`` or ``up``
    (SDF < 0 on either): elsewhere both SDFs are >= 0, so with 0 <= w <= 1 the blend is too (products and sums of
    non-negative floats), and only these pixels need the blend, which then is the same float64 arithmetic."""
    if not (masks[lo].any() or masks[up].any()):
        return np.zeros(0, np.intp), np.zeros(0, np.float32), np.zeros(0, np.float32)
    below = sdf[lo] if masks[lo].any() else _end_sdf(sdf[up])
    above = sdf[up] if masks[up].any() else _end_sdf(sdf[lo])
    where = np.flatnonzero((below < 0) | (above < 0))
    return where, below.ravel()[where], above.ravel()[where]


METHODS: dict[str, Method] = {"nearest": nearest, "linear": linear, "shape": shape}


def register_method(name: str, method: Method) -> None:
    """Add a reconstruction method (a learned one registers itself here)."""
    METHODS[name] = method


def get_method(name: str) -> Method:
    if name not in METHODS and name == "dmcvr":
        from ..dmcvr import reconstruction  # noqa: F401  (registers "dmcvr")
    if name not in METHODS:  # dmcvr registers itself on first use: named here too
        raise InputError(f"unknown reconstruction method {name!r}; choose one of {sorted({*METHODS, 'dmcvr'})}")
    return METHODS[name]
