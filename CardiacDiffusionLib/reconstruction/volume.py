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


def target_positions(positions: np.ndarray, spacing: float) -> np.ndarray:
    """Regular positions from the first to the last slice, ``spacing`` mm apart."""
    if spacing <= 0:
        raise InputError(f"--spacing must be positive, got {spacing}")
    length = float(positions[-1] - positions[0])
    count = int(np.floor(length / spacing + 1e-6)) + 1
    return positions[0] + spacing * np.arange(count)


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
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(tuple(float(v) for v in stack.origins[0]))
    image.SetSpacing((float(stack.pixel_spacing[0]), float(stack.pixel_spacing[1]), float(spacing)))
    image.SetDirection(tuple(stack.direction.flatten().tolist()))
    return image
