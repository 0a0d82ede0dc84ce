"""Reconstruct a SAX stack into a 3D volume at a chosen through-plane spacing, geometry kept.

The output frame is the input's: the first slice's origin, the stack's direction (in-plane axes
and normal) and in-plane spacing; only the through-plane spacing changes (default 1 mm). The
volume runs from the first to the last acquired slice. A grid whose output and work would not fit in
the memory this machine has available is refused before anything is allocated (:func:`planned_targets`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry.stack import SliceStack


@dataclass
class Reconstruction:
    image: sitk.Image
    labels: sitk.Image | None
    method: str
    spacing: float


#: finer than this adds nothing to a 1-2 mm in-plane grid; more output slices than this is not a volume
#: reconstruction but a mistake. Whether a grid fits in memory is checked against the machine (planned_targets)
MIN_SPACING_MM, MAX_SLICES = 0.1, 2000
POSITION_TOLERANCE_MM = 1e-3
#: peak bytes per output voxel while a method runs and its result becomes images (measured peak RSS growth on ACDC
#: 216 x 256 from 91 to 361 output slices: 13 B/voxel for nearest/shape, 14 for dmcvr; rounded up for the copies
#: written), and dmcvr's fixed work (model, a batch of crops: peak RSS 0.75 GB at 91 slices, batch 32 on CPU)
BYTES_PER_VOXEL = {"nearest": 16, "linear": 16, "shape": 16, "dmcvr": 24}
FIXED_WORK_BYTES = {"dmcvr": 1 << 30}


def target_positions(positions: np.ndarray, spacing: float) -> np.ndarray:
    """Regular positions from the first to the last slice, ``spacing`` mm apart."""
    length = float(positions[-1] - positions[0])
    if not np.isfinite(spacing) or spacing < MIN_SPACING_MM:
        raise InputError(f"--spacing {spacing}: give the output's slice spacing in mm, at least {MIN_SPACING_MM} (default 1)")
    if spacing > length + POSITION_TOLERANCE_MM:
        raise InputError(f"--spacing {spacing} mm: larger than the stack's extent ({length:.1f} mm), so the output "
                         f"would be one slice; give at most {length:.1f} (default 1)")  # fmt: skip
    count = _count(length, spacing)
    if count > MAX_SLICES:
        raise InputError(f"--spacing {spacing} mm: {count} output slices over {length:.0f} mm (at most {MAX_SLICES}); "
                         f"give at least {np.ceil(length / (MAX_SLICES - 1) * 1000) / 1000:.3f} mm")  # fmt: skip
    return np.minimum(positions[0] + spacing * np.arange(count), positions[-1])


def _count(length: float, spacing: float) -> int:
    # DICOM positions are rounded (Sunnybrook's 12 slices 10 mm apart span 109.9997 mm): a last slice within
    # POSITION_TOLERANCE_MM of the grid is on it, else the output would end one spacing short of it
    return int(np.floor(min((length + POSITION_TOLERANCE_MM) / spacing, 1e18))) + 1  # 1e-320 mm: not inf


def output_bytes(stack: SliceStack, spacing: float, method: str = "shape") -> int:
    """Peak memory (bytes) :func:`reconstruct` needs for ``stack`` at ``spacing`` mm with ``method``."""
    rows, cols = stack.shape2d
    count = _count(float(stack.positions[-1] - stack.positions[0]), spacing)
    return count * rows * cols * BYTES_PER_VOXEL.get(method, 24) + FIXED_WORK_BYTES.get(method, 0)


def planned_targets(stack: SliceStack, spacing: float, method: str = "shape", available: int | None = None,
                    option: str = "--spacing") -> np.ndarray:  # fmt: skip
    """:func:`target_positions`, after checking that the output and the work of ``method`` fit in ``available``
    bytes (default: :func:`~CardiacDiffusionLib.utils.device.available_memory`, this machine's now)."""
    from ..utils.device import available_memory

    if stack.n < 2:
        raise InputError(f"{stack.source}: needs at least 2 slices to reconstruct, got {stack.n}")
    length = float(stack.positions[-1] - stack.positions[0])
    available = available_memory() if available is None else available
    if available is not None and np.isfinite(spacing) and 0 < spacing <= length + POSITION_TOLERANCE_MM:
        need = output_bytes(stack, spacing, method)
        if need > available:
            rows, cols = stack.shape2d
            said = (f"{option} {spacing}: {_count(length, spacing)} output slices of {rows} x {cols} pixels over "
                    f"{length:.0f} mm would need {need / 1e9:.4g} GB of memory ({method}, output and work) and this "
                    f"machine has {available / 1e9:.3g} GB available")  # fmt: skip
            slices = (available - FIXED_WORK_BYTES.get(method, 0)) // (rows * cols * BYTES_PER_VOXEL.get(method, 24))
            if slices < 2:  # not even the acquired extent in one step
                raise InputError(f"{said}; close other programs or use a method that needs less (shape)")
            fits = _finest(stack, method, available, max(MIN_SPACING_MM, length / (slices - 1), length / (MAX_SLICES - 1)))
            raise InputError(f"{said}; give {option} {fits:.3f} mm or more (default 1)")
    return target_positions(stack.positions, spacing)


def _finest(stack: SliceStack, method: str, available: int, estimate: float) -> float:
    """The finest spacing in whole micrometres near ``estimate``, from MIN_SPACING_MM to the stack's extent, whose
    grid fits in ``available`` bytes (the last slice's tolerance moves the count by one either way)."""
    length = float(stack.positions[-1] - stack.positions[0])
    lowest, highest = int(np.ceil(MIN_SPACING_MM * 1000)), max(int(np.floor(length * 1000)), 1)
    um = min(max(int(np.ceil(estimate * 1000)), lowest), highest)
    def fit(um: int) -> bool:
        return output_bytes(stack, um / 1000, method) <= available and _count(length, um / 1000) <= MAX_SLICES

    while um > lowest and fit(um - 1):
        um -= 1
    while um < highest and not fit(um):
        um += 1
    return um / 1000


def reconstruct(stack: SliceStack, method: str = "shape", spacing: float = 1.0, **options) -> Reconstruction:
    """Fill the gaps of ``stack`` with ``method`` and return image and labels volumes (a grid that would not fit
    in the memory available is refused first: :func:`planned_targets`)."""
    targets = planned_targets(stack, spacing, method)
    from .baselines import get_method  # here: SciPy, which the grid functions above do not need (`inspect`)

    run = get_method(method)
    takes = inspect.signature(run).parameters
    unknown = sorted(set(options) - set(takes)) if not any(p.kind is p.VAR_KEYWORD for p in takes.values()) else []
    if unknown:  # e.g. dmcvr's steps or device given to shape: a clear refusal, not Python's TypeError
        known = [name for name in takes if name not in ("stack", "targets")]
        raise InputError(f"{', '.join(unknown)}: not an option of the {method} method (its options: "
                         f"{', '.join(known) or 'none'}); leave it out")  # fmt: skip
    images, labels = run(stack, targets, **options)
    return Reconstruction(  # copy=False: a method's float32/uint8 arrays are not copied once more
        image=_on_grid(images.astype(np.float32, copy=False), stack, spacing),
        labels=None if labels is None else _on_grid(labels.astype(np.uint8, copy=False), stack, spacing),
        method=method,
        spacing=spacing,
    )


def _on_grid(array: np.ndarray, stack: SliceStack, spacing: float) -> sitk.Image:
    return _framed(sitk.GetImageFromArray(array), stack, spacing)


def output_grid(stack: SliceStack, spacing: float = 1.0) -> sitk.Image:
    """An empty (uint8) image on the grid :func:`reconstruct` writes ``stack`` to at ``spacing`` mm."""
    rows, cols = stack.shape2d
    count = len(planned_targets(stack, spacing))
    return _framed(sitk.Image(int(cols), int(rows), count, sitk.sitkUInt8), stack, spacing)


def _framed(image: sitk.Image, stack: SliceStack, spacing: float) -> sitk.Image:
    image.SetOrigin(tuple(float(v) for v in stack.origins[0]))
    image.SetSpacing((float(stack.pixel_spacing[0]), float(stack.pixel_spacing[1]), float(spacing)))
    image.SetDirection(tuple(stack.direction.flatten().tolist()))
    return image
