"""SADIR samples: myocardium volumes in a normalised LV frame and the sparse SAX slices placed in it.

The frame is built from the SAX stack alone (so training and inference place slices the same way):

- axes: x = the stack's row direction, y = its column direction, z = its normal (base -> apex for a
  SAX stack planned on the long axis);
- in-plane centre: centroid of the LV (labels 1 + 2) over all slices;
- z: the first voxel plane starts ``TOP_MARGIN_MM`` above the most basal slice holding myocardium
  (the base lies 0..1 gap above it), so the apex fits below for any phantom;
- a cube of ``FOV_MM`` (112 mm) sampled at ``size`` voxels: 32^3 (3.5 mm) for the network and the
  shooting, 64^3 (1.75 mm) for the output and the evaluation.

Each slice is put on the voxel plane nearest its true position (at most half a voxel away), its
labels sampled (nearest) at that plane's voxel centres through the slice's own geometry, so in-plane
shifts and uneven gaps are kept; a mask channel marks the observed voxels (inside the slice's field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..geometry.stack import SliceStack

if TYPE_CHECKING:
    import SimpleITK as sitk

    from ..phantoms.mr import MRPhantom

# SimpleITK and the phantoms (which need it) are imported where used: training from a pack
# (scripts/pack_sadir_phantoms.py) runs on GPU servers without SimpleITK.

FOV_MM = 112.0
TOP_MARGIN_MM = 14.0
MODEL_SIZE = 32
OUTPUT_SIZE = 64
MYO = 2
MIN_SLICES = 3
#: slices with myocardium closer than this along the normal are one position for MIN_SLICES
DISTINCT_MM = 0.5
#: the network's condition keeps slices at least this far apart (trained on 8-12 mm gaps; docs/models/sadir.md)
CONDITION_MIN_GAP_MM = 5.0


@dataclass(frozen=True)
class LVFrame:
    """A cube ``size``^3 of voxels, ``spacing`` mm, axes = columns of ``direction`` (LPS)."""

    origin: np.ndarray  # LPS centre of voxel (0, 0, 0)
    direction: np.ndarray  # 3x3, columns x, y, z
    size: int
    spacing: float

    def resized(self, size: int) -> "LVFrame":
        """The same cube sampled with ``size`` voxels per axis."""
        spacing = FOV_MM / size
        corner = self.origin - 0.5 * self.spacing * self.direction.sum(axis=1)
        return LVFrame(corner + 0.5 * spacing * self.direction.sum(axis=1), self.direction, size, spacing)

    def points(self) -> np.ndarray:
        """(size, size, size, 3) LPS voxel centres, array order (z, y, x) as SimpleITK."""
        i = np.arange(self.size) * self.spacing
        z, y, x = np.meshgrid(i, i, i, indexing="ij")
        return self.origin + np.stack([x, y, z], -1) @ self.direction.T

    def reference(self) -> sitk.Image:
        import SimpleITK as sitk

        image = sitk.Image([self.size] * 3, sitk.sitkUInt8)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing((self.spacing,) * 3)
        image.SetDirection(tuple(self.direction.flatten().tolist()))
        return image

    def to_image(self, array: np.ndarray) -> sitk.Image:
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(array)
        image.CopyInformation(self.reference())
        return image


def check_stack(stack: SliceStack) -> None:
    """Labels with myocardium on at least MIN_SLICES slices at distinct positions, and a usable geometry."""
    if stack.labels is None:
        raise InputError(f"{stack.source}: SADIR needs myocardium labels on the slices; segment the SAX slices first")
    sx, sy = (float(v) for v in stack.pixel_spacing)
    if not (np.isfinite([sx, sy]).all() and min(sx, sy) > 0):
        raise InputError(f"{stack.source}: pixel spacing {sx} x {sy} mm is not positive and finite; give the slices' "
                         "true pixel spacing")  # fmt: skip
    if not (np.isfinite(stack.origins).all() and np.isfinite(stack.direction).all()):
        raise InputError(f"{stack.source}: slice positions hold NaN or infinite values; give the slices' true "
                         "positions and orientation (DICOM ImagePositionPatient / ImageOrientationPatient)")  # fmt: skip
    shows = np.any(stack.labels == MYO, axis=(1, 2))
    with_myo = int(np.sum(shows))
    if with_myo < MIN_SLICES:
        raise InputError(
            f"{stack.source}: {with_myo} slice(s) show LV myocardium (label {MYO}); SADIR needs at least "
            f"{MIN_SLICES}: give more SAX slices"
        )
    distinct = 1 + int(np.sum(np.diff(np.sort(stack.positions[shows])) > DISTINCT_MM))
    if distinct < MIN_SLICES:
        raise InputError(
            f"{stack.source}: the {with_myo} slices with myocardium lie at {distinct} distinct position(s) along "
            f"the normal (closer than {DISTINCT_MM} mm count as one); SADIR needs {MIN_SLICES}: check the slice "
            "positions (a stack saved without them, or one position repeated)"
        )


def lv_frame(stack: SliceStack, size: int = MODEL_SIZE) -> LVFrame:
    """The normalised LV frame of a labelled SAX stack (see the module docstring)."""
    check_stack(stack)
    lv = np.isin(stack.labels, (1, MYO))
    k, r, c = np.nonzero(lv)
    sx, sy = stack.pixel_spacing
    pts = stack.origins[k] + (c * sx)[:, None] * stack.row_dir + (r * sy)[:, None] * stack.col_dir
    centre = pts.mean(axis=0)
    first = int(np.flatnonzero(np.any(stack.labels == MYO, axis=(1, 2)))[0])
    top = stack.positions[first] - TOP_MARGIN_MM
    spacing = FOV_MM / size
    direction = stack.direction
    # in-plane: centred on the LV centroid; along z: first plane TOP_MARGIN_MM above the first myocardium slice
    centre = centre + (top + spacing / 2 - centre @ stack.normal) * stack.normal
    origin = centre - (FOV_MM / 2 - spacing / 2) * (stack.row_dir + stack.col_dir)
    return LVFrame(origin, direction, size, spacing)


def slice_planes(stack: SliceStack, frame: LVFrame) -> np.ndarray:
    """(n_slices,) index of each slice's nearest voxel plane of ``frame`` (outside [0, size): not in the frame)."""
    return np.round((stack.positions - frame.origin @ stack.normal) / frame.spacing).astype(int)


def sparse_volume(stack: SliceStack, frame: LVFrame) -> tuple[np.ndarray, np.ndarray]:
    """(myocardium, mask) float32 arrays (size^3) with each slice on its nearest voxel plane."""
    n, s = frame.size, frame.spacing
    sparse = np.zeros((n, n, n), np.float32)
    mask = np.zeros((n, n, n), np.float32)
    planes = slice_planes(stack, frame)
    i = np.arange(n) * s
    y, x = np.meshgrid(i, i, indexing="ij")
    rows, cols = stack.shape2d
    sx, sy = stack.pixel_spacing
    for j in range(stack.n):
        k = int(planes[j])
        if not 0 <= k < n:
            continue
        plane = frame.origin + k * s * stack.normal + x[..., None] * stack.row_dir + y[..., None] * stack.col_dir
        rel = plane - stack.origins[j]
        c = np.round(rel @ stack.row_dir / sx).astype(int)
        r = np.round(rel @ stack.col_dir / sy).astype(int)
        inside = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
        values = np.zeros((n, n), np.float32)
        values[inside] = stack.labels[j][r[inside], c[inside]] == MYO
        sparse[k], mask[k] = values, inside.astype(np.float32)
    return sparse, mask


def slice_slab(stack: SliceStack, frame: LVFrame) -> np.ndarray:
    """(size,) bool along the frame's slice axis (array axis 0): True from the first to the last plane that
    holds a slice. Beyond it the slices do not tell where the base or the apex ends (evaluation)."""
    _, mask = sparse_volume(stack, frame)
    planes = np.flatnonzero(mask.reshape(frame.size, -1).any(1))
    slab = np.zeros(frame.size, bool)
    if planes.size:
        slab[planes[0] : planes[-1] + 1] = True
    return slab


def label_stack(phantom: MRPhantom, gap_mm: float = 10.0, pixel_mm: float = 2.0, matrix: int = 72) -> SliceStack:
    """Label-only SAX stack of ``phantom`` planned as :func:`~..phantoms.scanner.acquire_sax` plans it.

    Same levels (same random stream) and plane axes as the virtual scanner, labels of the centre
    plane, no image synthesis (pixels = labels): fast enough to make hundreds of training samples.
    """
    from ..phantoms.scanner import _PLAN, sax_frame

    ed = phantom if phantom.phase == "ED" else phantom.with_phase("ED")
    first = -np.random.default_rng([phantom.seed, _PLAN]).uniform(0.0, 0.5) * gap_mm
    count = int(np.ceil((ed.shape.l_epi - first) / gap_mm)) + 1
    levels = first + gap_mm * np.arange(count)
    row, col = sax_frame(ed)
    half = pixel_mm * (matrix - 1) / 2.0
    offset = 10.0 * ed.rv_direction + pixel_mm * (0.3 * row + 0.2 * col)  # the scanner's sub-pixel offset
    origins = ed.base_center + levels[:, None] * ed.long_axis + offset - half * (row + col)
    jj, ii = np.meshgrid(np.arange(matrix), np.arange(matrix), indexing="ij")
    plane = (ii[..., None] * row + jj[..., None] * col) * pixel_mm
    labels = np.array([phantom.labels_at(o + plane) for o in origins])
    return SliceStack(labels.astype(np.float32), origins, row, col, (pixel_mm, pixel_mm), labels=labels,
                      thickness=8.0, source=f"phantom {phantom.seed} SAX labels {phantom.phase}")  # fmt: skip


def myocardium_slices(stack: SliceStack, count: int | None) -> SliceStack:
    """``count`` slices spread evenly over those showing myocardium (all of them when None)."""
    idx = np.flatnonzero(np.any(stack.labels == MYO, axis=(1, 2)))
    if count is not None and count < len(idx):
        idx = idx[np.round(np.linspace(0, len(idx) - 1, count)).astype(int)]
    return stack.subset(idx)


def spread_slices(stack: SliceStack, min_gap_mm: float = CONDITION_MIN_GAP_MM) -> SliceStack:
    """The slices at least ``min_gap_mm`` apart along the normal, first and last kept (greedy from the first).

    The network's condition: it was trained on gaps of 8-12 mm; a 4 mm stack puts slices on nearly every
    3.5 mm plane, which it never saw (tuning phantoms 4100-4101: Dice -0.003 / +0.015 with every other slice;
    5-6 mm stacks lose 0.001-0.003 when thinned, so they are kept). The refinement still fits every slice."""
    pos = stack.positions
    keep = [0]
    for k in range(1, stack.n):
        if pos[k] - pos[keep[-1]] >= min_gap_mm - 1e-6:
            keep.append(k)
    if keep[-1] != stack.n - 1:  # the last slice bounds the apex (or the base): kept, instead of one too close
        if len(keep) > 1:
            keep.pop()
        keep.append(stack.n - 1)
    return stack.subset(keep)


def truth_myocardium(phantom: MRPhantom, frame: LVFrame) -> np.ndarray:
    """uint8 myocardium (1) of ``phantom`` at the frame's voxel centres."""
    return (phantom.labels_at(frame.points()) == MYO).astype(np.uint8)


def downsample(mask: np.ndarray, size: int) -> np.ndarray:
    """Fraction of each coarse voxel covered by ``mask`` (a soft volume in [0, 1])."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.adaptive_avg_pool3d(t, size)[0, 0].numpy()


def make_sample(
    seed: int, phase: str | None = None, gap_mm: float = 10.0, slices: int | None = 8, size: int = MODEL_SIZE,
    output_size: int = OUTPUT_SIZE,
) -> dict:  # fmt: skip
    """One training/test sample: frame, truth at the output and model sizes, sparse slices and mask."""
    from ..phantoms.mr import PHASES, MRPhantom

    phase = phase or PHASES[seed % 2]
    phantom = MRPhantom(seed, phase)
    stack = myocardium_slices(label_stack(phantom, gap_mm), slices)
    frame = lv_frame(stack, size)
    fine = frame.resized(output_size)
    truth = truth_myocardium(phantom, fine)
    sparse, mask = sparse_volume(stack, frame)
    return {"seed": seed, "phase": phase, "stack": stack, "frame": frame, "truth_fine": truth,
            "truth": downsample(truth, size), "sparse": sparse, "mask": mask}  # fmt: skip
