"""Reconstruct a SAX stack into a 3D volume at a chosen through-plane spacing, geometry kept.

The output frame is the input's: the first slice's origin, the stack's direction (in-plane axes
and normal) and in-plane spacing; only the through-plane spacing changes (default 1 mm). The
volume runs from the first to the last acquired slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry.stack import SliceStack
from .baselines import get_method


@dataclass
class Reconstruction:
    image: sitk.Image
    labels: sitk.Image | None
    method: str
    spacing: float


#: finer than this adds nothing to a 1-2 mm in-plane grid; more output slices than this is not a volume
#: reconstruction but a mistake (memory grows with them: 2 000 x 512 x 512 float32 is 2 GB)
MIN_SPACING_MM, MAX_SLICES = 0.1, 2000
POSITION_TOLERANCE_MM = 1e-3


def target_positions(positions: np.ndarray, spacing: float) -> np.ndarray:
    """Regular positions from the first to the last slice, ``spacing`` mm apart."""
    length = float(positions[-1] - positions[0])
    if not np.isfinite(spacing) or spacing < MIN_SPACING_MM:
        raise InputError(f"--spacing {spacing}: give the output's slice spacing in mm, at least {MIN_SPACING_MM} (default 1)")
    if spacing > length + POSITION_TOLERANCE_MM:
        raise InputError(f"--spacing {spacing} mm: larger than the stack's extent ({length:.1f} mm), so the output "
                         f"would be one slice; give at most {length:.1f} (default 1)")  # fmt: skip
    # DICOM positions are rounded (Sunnybrook's 12 slices 10 mm apart span 109.9997 mm): a last slice within
    # POSITION_TOLERANCE_MM of the grid is on it, else the output would end one spacing short of it
    count = int(np.floor((length + POSITION_TOLERANCE_MM) / spacing)) + 1
    if count > MAX_SLICES:
        raise InputError(f"--spacing {spacing} mm: {count} output slices over {length:.0f} mm (at most {MAX_SLICES}); "
                         f"give at least {np.ceil(length / (MAX_SLICES - 1) * 1000) / 1000:.3f} mm")  # fmt: skip
    return np.minimum(positions[0] + spacing * np.arange(count), positions[-1])


def reconstruct(stack: SliceStack, method: str = "shape", spacing: float = 1.0, **options) -> Reconstruction:
    """Fill the gaps of ``stack`` with ``method`` and return image and labels volumes."""
    if stack.n < 2:
        raise InputError(f"{stack.source}: needs at least 2 slices to reconstruct, got {stack.n}")
    targets = target_positions(stack.positions, spacing)
    images, labels = get_method(method)(stack, targets, **options)
    return Reconstruction(
        image=_on_grid(images.astype(np.float32), stack, spacing),
        labels=None if labels is None else _on_grid(labels.astype(np.uint8), stack, spacing),
        method=method,
        spacing=spacing,
    )


def _on_grid(array: np.ndarray, stack: SliceStack, spacing: float) -> sitk.Image:
    return _framed(sitk.GetImageFromArray(array), stack, spacing)


def output_grid(stack: SliceStack, spacing: float = 1.0) -> sitk.Image:
    """An empty (uint8) image on the grid :func:`reconstruct` writes ``stack`` to at ``spacing`` mm."""
    rows, cols = stack.shape2d
    count = len(target_positions(stack.positions, spacing))
    return _framed(sitk.Image(int(cols), int(rows), count, sitk.sitkUInt8), stack, spacing)


def _framed(image: sitk.Image, stack: SliceStack, spacing: float) -> sitk.Image:
    image.SetOrigin(tuple(float(v) for v in stack.origins[0]))
    image.SetSpacing((float(stack.pixel_spacing[0]), float(stack.pixel_spacing[1]), float(spacing)))
    image.SetDirection(tuple(stack.direction.flatten().tolist()))
    return image
