"""The LV frame of a labelled SAX stack: LV centres, long axis, anterior RV insertion per slice, heights.

Angles follow the activation convention (phantoms/activation.py): 0 at the anterior RV insertion,
increasing through the septum first (AHA order), i.e. right-handed about the base -> apex axis
(counter-clockwise on a short-axis view seen from the apex). Heights: 0 at the base, 1 at the apex.

Per slice (as DENSE analysis does), the insertion is where the RV cavity (label 3) touches the LV
myocardium (label 2): the contact pixels form an arc around the LV centre; seen along the angle
sense above, the arc starts at the anterior insertion and ends at the inferior one. Slices without
an RV (apical) take the nearest slice's direction. Points given by the user replace detection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..geometry.stack import SliceStack, normal_points_to_apex

LV, MYO, RV = 1, 2, 3
MIN_MYO_PIXELS = 12
#: an RV contact arc narrower than this (rad) does not place the insertion (the nearest slice's is used)
MIN_CONTACT_ARC = np.deg2rad(20.0)


@dataclass
class LVFrame:
    """Cardiac cylindrical coordinates of one stack (all vectors LPS, positions in mm along ``axis``)."""

    axis: np.ndarray  # base -> apex unit vector (the stack normal, signed)
    e0: np.ndarray  # global angle 0: mean anterior RV insertion direction (in-plane unit vector)
    slices: np.ndarray  # stack indices of the slices that hold myocardium, base to apex
    positions: np.ndarray  # their positions along ``axis`` (mm)
    centres: np.ndarray  # (n, 3) LV centre of each of those slices
    insertion_points: np.ndarray  # (n, 3) anterior RV insertion point of each slice
    insertion_angles: np.ndarray  # (n,) angle (rad) of each slice's insertion in the global frame
    insertion_source: list[str]  # per slice: "labels", "user" or "nearest slice"
    base: float  # base position along ``axis`` (mm)
    apex: float
    notes: list[str] = field(default_factory=list)

    @property
    def e1(self) -> np.ndarray:
        return np.cross(self.axis, self.e0)

    def centre_at(self, position: np.ndarray) -> np.ndarray:
        """LV centre line (linear between slice centres, held beyond the ends) at axis positions."""
        position = np.asarray(position, float)
        return np.stack([np.interp(position, self.positions, self.centres[:, d]) for d in range(3)], axis=-1)

    def coords(self, points) -> tuple[np.ndarray, np.ndarray]:
        """(angle rad in [0, 2pi), height) of LPS points ``(..., 3)``; heights not clipped."""
        p = np.asarray(points, float)
        position = p @ self.axis
        d = p - self.centre_at(position)
        angle = np.mod(np.arctan2(d @ self.e1, d @ self.e0), 2 * np.pi)
        return angle, self.height(position)

    def insertion_angle_at(self, position) -> np.ndarray:
        """Angle (rad) of the anterior RV insertion at axis positions: the slices' (unwrapped) linear between
        slices, held beyond the end slices."""
        return np.interp(np.asarray(position, float), self.positions, np.unwrap(self.insertion_angles))

    def aha_coords(self, points) -> tuple[np.ndarray, np.ndarray]:
        """(angle rad in [0, 2pi) from the anterior RV insertion of the point's own level, height) of LPS points.

        The AHA rule: each level's septum lies between its own RV insertions, so the segments of a heart whose
        insertion turns from base to apex turn with it, as each slice's 18 sectors do.
        """
        p = np.asarray(points, float)
        angle, height = self.coords(p)
        return np.mod(angle - self.insertion_angle_at(p @ self.axis), 2 * np.pi), height

    def height(self, position) -> np.ndarray:
        return (np.asarray(position, float) - self.base) / (self.apex - self.base)

    def subset(self, stack_indices) -> "LVFrame":
        """The frame restricted to some of its slices (given as stack indices); axis, angle 0, base, apex kept."""
        rows = [int(np.flatnonzero(self.slices == k)[0]) for k in stack_indices]
        return replace(
            self, slices=self.slices[rows], positions=self.positions[rows], centres=self.centres[rows],
            insertion_points=self.insertion_points[rows], insertion_angles=self.insertion_angles[rows],
            insertion_source=[self.insertion_source[i] for i in rows], notes=list(self.notes),
        )  # fmt: skip

    def slice_heights(self) -> np.ndarray:
        return self.height(self.positions)

    def summary(self) -> dict:
        deg = np.rad2deg(self.insertion_angles)
        return {
            "long_axis_lps": _r(self.axis), "angle0_dir_lps": _r(self.e0),
            "slices_with_myocardium": self.slices.tolist(),
            "slice_heights": [round(float(h), 4) for h in self.slice_heights()],
            "rv_insertion_anterior_lps": [_r(p, 2) for p in self.insertion_points],
            "rv_insertion_angle_deg": [round(float(v), 2) for v in (deg + 180) % 360 - 180],
            "rv_insertion_source": self.insertion_source,
            "base_position_mm": round(float(self.base), 3), "apex_position_mm": round(float(self.apex), 3),
            "angle_convention": "0 at the anterior RV insertion, septum first (right-handed about base->apex)",
            "notes": self.notes,
        }  # fmt: skip


def _r(v, n: int = 5) -> list[float]:
    return [round(float(x), n) for x in v]


def pixel_points(stack: SliceStack, k: int, rc: np.ndarray) -> np.ndarray:
    """LPS points of pixels ``rc`` (m, 2: row, col) of slice ``k``."""
    sx, sy = stack.pixel_spacing
    return stack.origins[k] + rc[:, 1:2] * sx * stack.row_dir + rc[:, 0:1] * sy * stack.col_dir


def _axis(stack: SliceStack, myo_slices: np.ndarray) -> np.ndarray:
    """Stack normal signed base -> apex: the heart's area (LV cavity + wall, RV) shrinks towards the apex."""
    return stack.normal if normal_points_to_apex(stack, myo_slices) else -stack.normal


def _contact_angles(stack, k, centre, e0, e1):
    """Angles (rad) and LPS points of myocardium pixels of slice ``k`` that touch the RV cavity."""
    labels = stack.labels[k]
    touching = ndimage.binary_dilation(labels == RV, structure=np.ones((3, 3), bool)) & (labels == MYO)
    rc = np.argwhere(touching)
    if len(rc) < 2:
        return None, None
    points = pixel_points(stack, k, rc)
    d = points - centre
    return np.mod(np.arctan2(d @ e1, d @ e0), 2 * np.pi), points


def _arc_start(angles: np.ndarray) -> tuple[int, float]:
    """(index of the first angle of the arc, the one after the largest circular gap; the arc's span in rad)."""
    order = np.argsort(angles)
    a = angles[order]
    gaps = np.diff(np.append(a, a[0] + 2 * np.pi))
    return int(order[(np.argmax(gaps) + 1) % len(a)]), float(2 * np.pi - gaps.max())


def contact_arc(stack: SliceStack, k: int, centre, e0, e1) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(anterior insertion, inferior insertion: LPS points, the arc's span in rad) of the RV contact arc of slice
    ``k`` around ``centre`` (``e0``, ``e1``: in-plane basis, right-handed about base -> apex); None when the arc is
    narrower than :data:`MIN_CONTACT_ARC` (a few touching pixels at the base or apex say little)."""
    angles, contact = _contact_angles(stack, k, centre, e0, e1)
    if angles is None:
        return None
    start, span = _arc_start(angles)
    if span < MIN_CONTACT_ARC:
        return None
    end = int(np.argmin(np.abs(np.mod(angles - angles[start], 2 * np.pi) - span)))
    return contact[start], contact[end], span


def lv_frame(stack: SliceStack, rv_insertion=None, base=None, apex=None) -> LVFrame:
    """The :class:`LVFrame` of a labelled stack; ``rv_insertion``: LPS points (m, 3) replacing detection.

    With several user points each slice takes the point nearest to it along the long axis.
    ``base``/``apex`` (LPS points) override the estimates: the base half a slice gap above the
    most basal slice with myocardium, the apex half a gap beyond the most apical one.
    """
    if stack.labels is None:
        raise InputError(f"{stack.source}: has no labels; give the SAX labels (LV cavity 1, myocardium 2, RV 3)")
    counts = (stack.labels == MYO).reshape(stack.n, -1).sum(1)
    myo_slices = np.flatnonzero(counts >= MIN_MYO_PIXELS)
    if len(myo_slices) == 0:
        raise InputError(f"{stack.source}: no slice holds LV myocardium (label 2); check the labels' convention")
    axis = _axis(stack, myo_slices)
    myo_slices = myo_slices[np.argsort(stack.positions[myo_slices] * (axis @ stack.normal))]
    e0_ref = stack.row_dir - (stack.row_dir @ axis) * axis
    e0_ref /= np.linalg.norm(e0_ref)
    e1_ref = np.cross(axis, e0_ref)
    centres, positions = [], []
    for k in myo_slices:
        inside = np.argwhere(np.isin(stack.labels[k], (LV, MYO)))
        centres.append(pixel_points(stack, k, inside).mean(0))
        positions.append(float(centres[-1] @ axis))
    centres, positions = np.array(centres), np.array(positions)
    notes: list[str] = []
    points, sources = _insertions(stack, myo_slices, centres, positions, axis, e0_ref, e1_ref, rv_insertion, notes)
    dirs = points - centres
    dirs -= (dirs @ axis)[:, None] * axis
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    mean = dirs.mean(0)
    e0 = mean / np.linalg.norm(mean)
    e1 = np.cross(axis, e0)
    angles = np.mod(np.arctan2(dirs @ e1, dirs @ e0), 2 * np.pi)
    for point, option in ((base, "--base"), (apex, "--apex")):
        if point is not None and not np.all(np.isfinite(np.asarray(point, float))):
            raise InputError(f"{option}: the point must be finite LPS coordinates x,y,z (mm)")
    gap = float(np.median(np.abs(np.diff(stack.positions)))) if stack.n > 1 else 8.0
    base_pos = float(np.asarray(base, float) @ axis) if base is not None else positions[0] - gap / 2
    apex_pos = float(np.asarray(apex, float) @ axis) if apex is not None else positions[-1] + gap / 2
    if apex_pos - base_pos <= 0:
        raise InputError("LV frame: the apex must lie beyond the base along the long axis; check --base/--apex")
    return LVFrame(axis, e0, myo_slices, positions, centres, points, angles, sources, base_pos, apex_pos, notes)


def _insertions(stack, myo_slices, centres, positions, axis, e0, e1, rv_insertion, notes):
    n = len(myo_slices)
    if rv_insertion is not None:
        user = np.asarray(rv_insertion, float).reshape(-1, 3)
        if not np.all(np.isfinite(user)):
            raise InputError("--rv-insertion: points must be finite LPS coordinates x,y,z (mm)")
        nearest = np.argmin(np.abs((user @ axis)[None, :] - positions[:, None]), axis=1)
        points = user[nearest] - ((user[nearest] - centres) @ axis)[:, None] * axis  # into each slice plane
        at_centre = np.flatnonzero(np.linalg.norm(points - centres, axis=1) < 0.5 * min(stack.pixel_spacing))
        if len(at_centre):
            i = int(at_centre[np.argmin(np.abs(positions[at_centre] - user[nearest[at_centre]] @ axis))])  # its own
            raise InputError(
                f"--rv-insertion {','.join(f'{v:g}' for v in user[nearest[i]])}: lies at the LV centre of slice "
                f"{int(myo_slices[i])}, so its direction (angle 0 of the sectors) is undefined; give the anterior RV "
                "insertion, where the RV wall meets the septum, on the LV's epicardial border"
            )
        return points, ["user"] * n
    points = np.full((n, 3), np.nan)
    sources = ["labels"] * n
    for i, k in enumerate(myo_slices):
        arc = contact_arc(stack, k, centres[i], e0, e1)
        if arc is not None:
            points[i] = arc[0]
    found = np.flatnonzero(np.isfinite(points[:, 0]))
    if len(found) == 0:
        raise InputError(
            f"{stack.source}: no RV cavity (label 3) touches the LV myocardium in any slice, so the RV insertion "
            "(sector origin) is unknown; label the RV or give the anterior insertion with --rv-insertion x,y,z"
        )
    for i in np.flatnonzero(~np.isfinite(points[:, 0])):
        j = found[np.argmin(np.abs(positions[found] - positions[i]))]
        points[i] = centres[i] + (points[j] - centres[j])
        sources[i] = "nearest slice"
    if len(found) < n:
        notes.append(f"{n - len(found)} slice(s) without an RV contact arc of >= 20 degrees take the nearest "
                     "slice's insertion direction")  # fmt: skip
    return points, sources
