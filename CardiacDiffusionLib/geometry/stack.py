"""A stack of parallel 2D slices with their true positions (a SAX cine phase).

Coordinates are patient LPS millimetres, as in DICOM and SimpleITK. Arrays are indexed
``(slice, row, column)``, which is SimpleITK's ``GetArrayFromImage`` order ``(z, y, x)``:
``row_dir`` is the direction of increasing column index (image x), ``col_dir`` of increasing
row index (image y), and the normal is ``row_dir x col_dir``.

Slices are kept at their measured positions: uneven gaps and in-plane shifts between slices
(breath-hold misregistration) are measured and reported, never flattened into a regular grid
without saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:  # SimpleITK is imported where used: stacks, readers of arrays and the models run without it
    import SimpleITK as sitk

#: Two gaps differing by less than this (mm) count as equal.
GAP_TOLERANCE_MM = 0.05
#: In-plane offsets between slice origins below this (mm) count as no shift.
SHIFT_TOLERANCE_MM = 0.05


@dataclass
class SliceStack:
    """Parallel 2D slices (``pixels`` shaped ``(n, rows, cols)``) sorted along their normal."""

    pixels: np.ndarray
    origins: np.ndarray  # (n, 3) LPS position of pixel (row 0, col 0) of each slice
    row_dir: np.ndarray  # (3,) unit vector along increasing column index
    col_dir: np.ndarray  # (3,) unit vector along increasing row index
    pixel_spacing: tuple[float, float]  # (along row_dir, along col_dir) = (x, y) mm
    labels: np.ndarray | None = None  # (n, rows, cols) project label values
    thickness: float | None = None
    source: str = "SAX stack"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pixels = np.asarray(self.pixels, dtype=np.float32)
        self.origins = np.asarray(self.origins, dtype=np.float64).reshape(-1, 3)
        self.row_dir = _unit(self.row_dir)
        self.col_dir = _unit(self.col_dir)
        if self.pixels.ndim != 3:
            raise InputError(f"{self.source}: expected slices shaped (n, rows, cols), got {self.pixels.shape}")
        if len(self.origins) != len(self.pixels):
            raise InputError(f"{self.source}: {len(self.pixels)} slices but {len(self.origins)} slice positions")
        if abs(float(self.row_dir @ self.col_dir)) > 1e-3:
            raise InputError(f"{self.source}: row and column directions are not orthogonal")
        if self.labels is not None:
            self.labels = np.asarray(self.labels).astype(np.uint8)
            if self.labels.shape != self.pixels.shape:
                raise InputError(
                    f"{self.source}: labels shaped {self.labels.shape} do not match the image {self.pixels.shape}"
                )
        order = np.argsort(self.positions, kind="stable")
        if np.any(order != np.arange(len(order))):
            self.pixels = self.pixels[order]
            self.origins = self.origins[order]
            if self.labels is not None:
                self.labels = self.labels[order]
            for key in ("slice_meta",):
                if key in self.meta:
                    self.meta[key] = [self.meta[key][i] for i in order]

    # ---- derived geometry -------------------------------------------------------------------
    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the x (row_dir), y (col_dir) and z (normal) axes."""
        return np.stack([self.row_dir, self.col_dir, self.normal], axis=1)

    @property
    def positions(self) -> np.ndarray:
        """Signed position of each slice along the normal (mm)."""
        return self.origins @ self.normal

    @property
    def gaps(self) -> np.ndarray:
        return np.diff(self.positions)

    @property
    def shifts(self) -> np.ndarray:
        """In-plane offset (mm, along row_dir and col_dir) of each slice origin from the first slice's line."""
        rel = self.origins - self.origins[0]
        return np.stack([rel @ self.row_dir, rel @ self.col_dir], axis=1)

    @property
    def n(self) -> int:
        return len(self.pixels)

    @property
    def shape2d(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[2]

    def is_uniform(self) -> bool:
        gaps = self.gaps
        return len(gaps) == 0 or float(np.ptp(gaps)) <= GAP_TOLERANCE_MM

    def has_shifts(self) -> bool:
        return bool(np.any(np.abs(self.shifts) > SHIFT_TOLERANCE_MM))

    def geometry_report(self) -> dict:
        """What a user should know about the stack's geometry, as plain JSON-able values."""
        gaps = self.gaps
        report = {
            "slices": self.n,
            "rows_cols": list(self.shape2d),
            "pixel_spacing_mm": [float(s) for s in self.pixel_spacing],
            "slice_gaps_mm": [round(float(g), 3) for g in gaps],
            "uniform_gaps": self.is_uniform(),
            "max_in_plane_shift_mm": round(float(np.abs(self.shifts).max()), 3) if self.n else 0.0,
            "normal_lps": [round(float(v), 5) for v in self.normal],
        }
        warnings = []
        if not report["uniform_gaps"]:
            warnings.append(
                f"uneven slice gaps {report['slice_gaps_mm']} mm: slices are kept at their true positions"
            )
        if self.has_shifts():
            warnings.append(
                f"slices shifted in-plane against each other by up to {report['max_in_plane_shift_mm']} mm "
                "(breath-hold misregistration?)"
            )
        if np.any(gaps < 1e-3):
            warnings.append("two slices share one position: check the series for duplicate slices")
        reversed_order = slice_order_warning(self)
        if reversed_order:
            warnings.append(reversed_order)
        report["warnings"] = warnings
        return report

    # ---- conversions --------------------------------------------------------------------------
    def to_image(self, labels: bool = False) -> sitk.Image:
        """The stack as one regular SimpleITK volume; refuses uneven gaps or shifted slices."""
        if self.n < 2:
            spacing_z = self.thickness or 1.0
        else:
            if not self.is_uniform() or self.has_shifts():
                raise InputError(
                    f"{self.source}: slices are unevenly spaced or shifted in-plane "
                    f"({self.geometry_report()['warnings']}); it cannot be stored as one regular volume "
                    "without resampling: reconstruct it instead"
                )
            spacing_z = float(np.mean(self.gaps))
        if labels and self.labels is None:
            raise InputError(f"{self.source}: has no labels")
        import SimpleITK as sitk

        array = self.labels if labels else self.pixels
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((float(self.pixel_spacing[0]), float(self.pixel_spacing[1]), spacing_z))
        image.SetOrigin(tuple(float(v) for v in self.origins[0]))
        image.SetDirection(tuple(self.direction.flatten().tolist()))
        return image

    @classmethod
    def from_image(
        cls, image: sitk.Image, labels: sitk.Image | None = None, source: str = "SAX volume", file: str | None = None
    ) -> "SliceStack":
        """Split a 3D volume into its slices: along the image's third axis, or along another axis whose spacing is
        clearly the coarsest (:func:`slice_axis`: a stack saved slice axis first), every voxel kept in place.
        ``file`` names the input in messages. A slice axis tilted from the slices' normal (a sheared grid) gives
        slices shifted in-plane, kept so and said in ``meta["warnings"]``."""
        import SimpleITK as sitk

        where = f"{file} " if file else ""
        if image.GetDimension() != 3:
            raise InputError(f"{source}: expected a 3D stack of at least 2 slices, got {where}size {image.GetSize()}; "
                             "give the whole SAX series, not a single slice")  # fmt: skip
        notes = []
        axis = slice_axis(image)
        if axis != 2:
            notes.append(
                f"{source}: {where}holds its slices along its {('first', 'second')[axis]} axis "
                f"({image.GetSpacing()[axis]:g} mm apart), not its third: read as a stack along that axis (every voxel "
                "keeps its position in the patient; outputs store the slices along their third axis)"
            )
            order = [a for a in range(3) if a != axis] + [axis]
            image = sitk.PermuteAxes(image, order)
            labels = None if labels is None else sitk.PermuteAxes(labels, order)
        if image.GetSize()[2] < 2:
            raise InputError(
                f"{source}: expected a 3D stack of at least 2 slices, got {where}size {image.GetSize()}; "
                "give the whole SAX series, not a single slice"
            )
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{source}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components")
        direction = np.array(image.GetDirection()).reshape(3, 3)
        in_plane = _angle_deg(direction[:, 0], direction[:, 1])
        if abs(np.cos(np.radians(in_plane))) > 1e-3:  # SliceStack's own limit
            raise InputError(
                f"{source}: {where}has in-plane axes {in_plane:.1f} deg apart, not 90 (a sheared direction matrix), so "
                "its pixels are not a 2D image grid; resample it onto an orthogonal grid (e.g. SimpleITK Resample with "
                "an orthonormal direction) or re-export it from the scanner's DICOM series"
            )
        tilt = _angle_deg(direction[:, 2], np.cross(direction[:, 0], direction[:, 1]))
        tilt = min(tilt, 180.0 - tilt)
        spacing = image.GetSpacing()
        if spacing[2] * (image.GetSize()[2] - 1) * np.sin(np.radians(tilt)) > SHIFT_TOLERANCE_MM:
            notes.append(
                f"{source}: {where}has its slice axis tilted {tilt:.1f} deg from the slices' normal (a sheared grid, as "
                "after a gantry tilt): the slices are kept at their true positions, shifted in-plane against each other"
            )
        pixels = sitk.GetArrayFromImage(image).astype(np.float32)
        if not np.all(np.isfinite(pixels)):
            raise InputError(f"{source}: image holds NaN or infinite values; clean or mask them first")
        origin = np.array(image.GetOrigin())
        k = np.arange(image.GetSize()[2])
        origins = origin[None, :] + (k * spacing[2])[:, None] * direction[:, 2][None, :]
        label_array = None
        if labels is not None:
            if not same_grid(image, labels):
                raise InputError(f"{source}: labels are not on the image's grid (size, spacing, origin or direction differ)")
            label_array = sitk.GetArrayFromImage(labels)
        stack = cls(
            pixels=pixels,
            origins=origins,
            row_dir=direction[:, 0],
            col_dir=direction[:, 1],
            pixel_spacing=(spacing[0], spacing[1]),
            labels=label_array,
            thickness=spacing[2],
            source=source,
            meta={"warnings": notes} if notes else {},
        )
        return stack

    def with_labels(self, labels: np.ndarray | None) -> "SliceStack":
        return replace(self, labels=labels, meta=dict(self.meta))

    def subset(self, indices) -> "SliceStack":
        idx = np.asarray(indices)
        return replace(
            self,
            pixels=self.pixels[idx],
            origins=self.origins[idx],
            labels=None if self.labels is None else self.labels[idx],
            meta={k: v for k, v in self.meta.items() if k != "slice_meta"},
        )

    def transposed(self) -> "SliceStack":
        """The same slices described with rows and columns swapped: same voxels in space, the normal
        (row x column) flips and the slice order reverses."""
        swap = (lambda a: None if a is None else np.transpose(a, (0, 2, 1)))  # fmt: skip
        return replace(
            self,
            pixels=swap(self.pixels),
            labels=swap(self.labels),
            row_dir=self.col_dir,
            col_dir=self.row_dir,
            pixel_spacing=(self.pixel_spacing[1], self.pixel_spacing[0]),
            meta={k: v for k, v in self.meta.items() if k != "slice_meta"},
        )

    def turned(self) -> "SliceStack":
        """The same slices described with the in-plane axes turned by 90 degrees: the new rows run along
        the old columns, the new columns against the old rows; the normal and the slice order stay."""
        rows, cols = self.shape2d
        turn = (lambda a: None if a is None else np.ascontiguousarray(np.transpose(a, (0, 2, 1))[:, ::-1, :]))  # fmt: skip
        return replace(
            self,
            pixels=turn(self.pixels),
            labels=turn(self.labels),
            origins=self.origins + (cols - 1) * self.pixel_spacing[0] * self.row_dir,
            row_dir=self.col_dir,
            col_dir=-self.row_dir,
            pixel_spacing=(self.pixel_spacing[1], self.pixel_spacing[0]),
            meta={k: v for k, v in self.meta.items() if k != "slice_meta"},
        )


#: where the LV apex lies from its base in patient coordinates (LPS): left, anterior, inferior. The long
#: axis of a heart in the usual position lies within ~30-45 deg of it (the MR phantoms: within 11 deg)
APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)


def anatomy_says_normal_points_to_apex(stack: SliceStack) -> bool | None:
    """Whether the normal points base -> apex by the patient's anatomy (the apex lies left, anterior and
    inferior of the base), when the geometry can say: None if the orientation is not stored (``meta
    ["orientation_known"]`` False, or a normal within 5 deg of a scanner axis, as files without orientation
    get; a short-axis plane is double-oblique) or the normal lies across the expected axis (|cos| < 0.5)."""
    normal = np.asarray(stack.normal, float)
    if stack.meta.get("orientation_known") is False or np.abs(normal).max() > np.cos(np.deg2rad(5.0)):
        return None
    cos = float(normal @ APEX_DIRECTION_LPS)
    return None if abs(cos) < 0.5 else cos > 0


def normal_points_to_apex(stack: SliceStack, slices=None, values=(1, 2, 3), labels: np.ndarray | None = None) -> bool:
    """True when the stack's normal points base -> apex: by the anatomy where the geometry is true
    (:func:`anatomy_says_normal_points_to_apex`), else because the heart's short-axis area (project labels:
    LV cavity, LV wall and RV cavity) shrinks along it (fitted over ``slices``, default all). With the LV
    alone a flat-walled LV tilted the fit (ACDC 047 ES); with the RV, largest at the base, it does not. A
    stack whose area barely changes keeps its description (True). The area rule can decide differently for
    two phases of one acquisition (Sunnybrook SC-HF-I-1 phases 8 and 19); the anatomy cannot. ``labels``
    (n, any grid) stand in for the stack's own, e.g. a network's labels of its slices."""
    by_anatomy = anatomy_says_normal_points_to_apex(stack)
    if by_anatomy is not None:
        return by_anatomy
    labels = stack.labels if labels is None else labels
    if labels is None:
        raise InputError(f"{stack.source}: base and apex are told apart by the labels; the stack has none")
    idx = np.arange(stack.n) if slices is None else np.asarray(slices)
    areas = np.array([np.isin(labels[k], values).sum() for k in idx], float)
    return shrinks_along(stack.positions[idx], areas)


def area_trend(positions, areas) -> float | None:
    """How the heart's short-axis area (per slice, 0 = nothing there) changes along the normal: the slope of a
    line fitted over the slices with area, times their extent, over their mean area (> 0 grows, < 0 shrinks);
    None with fewer than two such slices."""
    positions, areas = np.asarray(positions, float), np.asarray(areas, float)
    keep = areas > 0
    if keep.sum() < 2:
        return None
    return float(np.polyfit(positions[keep], areas[keep], 1)[0] * np.ptp(positions[keep]) / areas[keep].mean())


def shrinks_along(positions, areas, tolerance: float = 0.25) -> bool:
    """False only when the areas (per slice, 0 = nothing there) clearly grow with the positions
    (:func:`area_trend` above ``tolerance``); a flat stack, or fewer than two slices with area, keeps its
    description: True."""
    trend = area_trend(positions, areas)
    return trend is None or trend <= tolerance


#: slices with heart needed before the area's trend is held against the anatomy (a hump-shaped profile of a
#: few slices says little)
ORDER_CHECK_MIN_SLICES = 4


def slice_order_warning(stack: SliceStack, labels: np.ndarray | None = None, values=(1, 2, 3),
                        tolerance: float = 0.25) -> str | None:  # fmt: skip
    """A warning when the slices' content runs against their stored geometry: the anatomy says where the apex
    lies along the normal (:func:`anatomy_says_normal_points_to_apex`), but the heart's area (``labels``,
    default the stack's own; values ``values``) clearly grows towards it (:func:`area_trend` beyond
    ``tolerance`` the wrong way). A file whose slices were stored in reverse order against its header (a
    through-plane mirror) looks so; every geometry check passes on it and the 3D result is the mirror image
    of the heart. None where the geometry cannot say, without labels, or with fewer than
    ``ORDER_CHECK_MIN_SLICES`` slices showing heart. ACDC 001-080 (read base -> apex) trend -2.36..-0.17, MR
    phantoms -1.65..-0.88, Sunnybrook (normal apex -> base) +0.16 / +0.68."""
    towards_apex = anatomy_says_normal_points_to_apex(stack)
    labels = stack.labels if labels is None else labels
    if towards_apex is None or labels is None:
        return None
    areas = np.array([np.isin(slice_, values).sum() for slice_ in labels], float)
    if (areas > 0).sum() < ORDER_CHECK_MIN_SLICES:
        return None
    trend = area_trend(stack.positions, areas)
    if (trend > tolerance) if towards_apex else (trend < -tolerance):
        return (f"{stack.source}: the heart's cross-section grows towards where the stored geometry puts the apex "
                "(left, anterior and inferior of the base): the slices may be stored in reverse order against their "
                "header (a through-plane mirror, which no geometry check sees), and the 3D result would be the heart's "
                "mirror image, base and apex (and the AHA rings) swapped. Check the file's slice order, e.g. "
                "re-convert it from the DICOM series")
    return None


#: an axis other than the third holds the slices when its spacing is at least this many times the other two's
SLICE_AXIS_RATIO = 2.0


def slice_axis(image: sitk.Image) -> int:
    """The axis (0, 1, 2) of a 3D image along which its slices lie: the third, unless another axis of at least
    2 voxels is spaced at least ``SLICE_AXIS_RATIO`` times coarser than both others (SAX slices lie 5-10 mm apart,
    pixels 1-2 mm), as in a stack saved slice axis first."""
    spacing, size = np.asarray(image.GetSpacing()[:3], float), image.GetSize()[:3]
    coarsest = int(np.argmax(spacing))
    others = np.delete(spacing, coarsest)
    if coarsest != 2 and size[coarsest] >= 2 and spacing[coarsest] >= SLICE_AXIS_RATIO * others.max():
        return coarsest
    return 2


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def _angle_deg(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(v))
    if norm < 1e-9:
        raise InputError("a slice direction vector is zero: the image orientation is missing")
    return v / norm
