"""Analytic MR biventricular phantom in patient coordinates (LPS mm), seeded and reproducible.

The heart is described by implicit shape functions in a heart frame whose origin is the LV base
centre: ``e3 = long_axis`` (base -> apex, pointing left, anterior and inferior in the body as in
real patients), ``e1 = rv_direction`` (from the LV axis towards the RV centre, perpendicular to
the long axis) and ``e2 = e3 x e1`` (``-e2`` points towards the anterior wall). In that frame
(``x1, x2, z``; ``z >= 0`` below the base plane):

- LV endocardium and epicardium are super-ellipsoidal caps ``rho < R g(theta) h(z) (1 - (z/L)^p)^(1/p)``
  with low-order angular (``g``) and longitudinal (``h``) harmonics, cut by the base plane ``z = 0``;
- the RV cavity is an ellipse per level, offset towards ``e1`` and minus the LV epicardium: a
  crescent wrapping the septum that tapers to nothing well above the LV apex.

Labels follow the project convention: 1 LV cavity, 2 LV myocardium (septum included), 3 RV cavity.
ED and ES come from the same seed: ES has the cavity shrunk to a drawn ejection fraction, a
shorter long axis (the base descends, the apex stays) and a thicker wall, with the myocardial
volume conserved exactly (solved on the analytic volume integrals).

Everything is a function of a physical point, so labels and intensities sampled on a 1 mm volume,
a SAX slice or a LAX plane agree: resampling the voxel truth onto a plane is a real geometry check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy.optimize import brentq

from ..errors import InputError
from .fields import SmoothField, rician

PHASES = ("ED", "ES")
#: points evaluated per chunk in :meth:`MRPhantom.labels_at` / :meth:`MRPhantom.intensity_at`
_CHUNK = 400_000
#: quadrature for the volume integrals (vectorised: the ES shape solve calls it many times)
_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(400)


@dataclass(frozen=True)
class Shape:
    """Sizes of one phase (mm); the harmonics are shared by both phases of a seed."""

    base_center: tuple[float, float, float]
    r_endo: float  # endocardial radius at the base (before harmonics)
    r_epi: float
    l_endo: float  # base plane to endocardial apex
    l_epi: float  # base plane to epicardial apex (the base-apex length)
    rv_width: float  # RV cavity width at the free wall, at the base
    l_rv: float  # base plane to the RV apex


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about the unit ``axis``."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


class MRPhantom:
    """One seeded biventricular heart at end-diastole (``"ED"``) or end-systole (``"ES"``)."""

    def __init__(self, seed: int = 0, phase: str = "ED"):
        if phase not in PHASES:
            raise InputError(f"phantom phase {phase!r} is unknown; use one of {PHASES}")
        self.seed = int(seed)
        self.phase = phase
        rng = np.random.default_rng(self.seed)
        self._draw_frame(rng)
        self._draw_shapes(rng)
        self._draw_appearance(rng)
        self.shape = self.shapes[phase]
        self.base_center = np.array(self.shape.base_center)

    # ---- random draws (order matters for reproducibility) -----------------------------------------
    def _draw_frame(self, rng: np.random.Generator) -> None:
        axis = np.array([0.62, -0.55, -0.56])  # left, anterior, inferior
        tilt = _rotation(rng.normal(size=3), np.deg2rad(rng.uniform(3.0, 10.0)))
        self.long_axis = tilt @ axis / np.linalg.norm(axis)
        toward_rv = np.array([-0.8, -0.45, 0.25])  # right and anterior of the LV
        toward_rv = toward_rv - (toward_rv @ self.long_axis) * self.long_axis
        spin = _rotation(self.long_axis, np.deg2rad(rng.uniform(-12.0, 12.0)))
        self.rv_direction = spin @ (toward_rv / np.linalg.norm(toward_rv))
        self.e2 = np.cross(self.long_axis, self.rv_direction)
        #: columns e1 (RV direction), e2, e3 (long axis): heart frame -> LPS
        self.frame = np.stack([self.rv_direction, self.e2, self.long_axis], axis=1)

    def _draw_shapes(self, rng: np.random.Generator) -> None:
        self.p = rng.uniform(2.4, 3.0)  # super-ellipse exponent of the long-axis profile
        self.harmonics = {
            "a2": rng.uniform(0.015, 0.04),
            "phi2": rng.uniform(0, np.pi),
            "a3": rng.uniform(0.0, 0.025),
            "phi3": rng.uniform(0, 2 * np.pi / 3),
            "c1": rng.uniform(-0.04, 0.04),
            "c2": rng.uniform(-0.04, 0.04),
        }
        self.rv_inner = rng.uniform(0.05, 0.15)  # RV ellipse reaches this fraction of r_epi behind the axis
        self.rv_breadth = rng.uniform(0.9, 1.05)  # RV half-breadth / its outer reach
        base = np.array([10.0, 15.0, 20.0]) + rng.normal(0.0, 5.0, size=3)
        l_epi = rng.uniform(82.0, 93.0)
        r_endo = rng.uniform(25.5, 28.0)
        wall = rng.uniform(8.5, 10.5)
        apex_wall = wall * rng.uniform(0.7, 0.85)
        rv_width = rng.uniform(14.0, 20.0)
        rv_fraction = rng.uniform(0.65, 0.78)
        base = tuple(float(v) for v in base)
        ed = Shape(base, r_endo, r_endo + wall, l_epi - apex_wall, l_epi, rv_width, rv_fraction * l_epi)
        self.target_ef = rng.uniform(0.52, 0.63)
        shortening = rng.uniform(0.06, 0.11)
        rv_squeeze = rng.uniform(0.5, 0.65)
        self.trigger_times_ms = {"ED": 0.0, "ES": float(round(rng.uniform(300.0, 360.0)))}
        self.shapes = {"ED": ed, "ES": self._systole(ed, shortening, rv_squeeze, rv_fraction)}

    def _systole(self, ed: Shape, shortening: float, rv_squeeze: float, rv_fraction: float) -> Shape:
        """ES shape: cavity volume ``(1 - EF) * EDV``, apex fixed, myocardial volume conserved."""
        wall_ed, apex_wall_ed = ed.r_epi - ed.r_endo, ed.l_epi - ed.l_endo
        l_epi = ed.l_epi * (1.0 - shortening)
        cavity = (1.0 - self.target_ef) * self.cap_volume(ed.r_endo, ed.l_endo, ed.l_epi)
        myocardium = self.cap_volume(ed.r_epi, ed.l_epi, ed.l_epi) - self.cap_volume(ed.r_endo, ed.l_endo, ed.l_epi)

        def sizes(wall: float) -> tuple[float, float]:
            l_endo = l_epi - apex_wall_ed * wall / wall_ed
            return np.sqrt(cavity / self.cap_volume(1.0, l_endo, l_epi)), l_endo

        def excess(wall: float) -> float:
            r_endo, l_endo = sizes(wall)
            return self.cap_volume(r_endo + wall, l_epi, l_epi) - cavity - myocardium

        wall = brentq(excess, wall_ed * 0.5, wall_ed * 4.0, xtol=1e-6)
        r_endo, l_endo = sizes(wall)
        apex = np.array(ed.base_center) + ed.l_epi * self.long_axis
        base = apex - l_epi * self.long_axis
        base = tuple(float(v) for v in base)
        rv_width, l_rv = ed.rv_width * rv_squeeze, rv_fraction * l_epi
        return Shape(base, float(r_endo), float(r_endo + wall), float(l_endo), l_epi, rv_width, l_rv)

    def _draw_appearance(self, rng: np.random.Generator) -> None:
        self.blood = rng.uniform(0.85, 0.95)
        self.muscle = rng.uniform(0.27, 0.33)
        self.fields = {
            "texture": SmoothField(rng, 12.0),
            "fat": SmoothField(rng, 25.0),
            "tissue": SmoothField(rng, 40.0),
            "bias": SmoothField(rng, 150.0, waves=8),
        }
        ed = self.shapes["ED"]
        heart_mid = np.array(ed.base_center) + 0.4 * ed.l_epi * self.long_axis
        self.body_center = heart_mid + np.array([-25.0, 45.0, 0.0]) + rng.normal(0.0, 4.0, size=3)
        self.body_axes = np.array([rng.uniform(155.0, 175.0), rng.uniform(105.0, 125.0)])
        #: angle (deg) about the long axis from the 2ch plane (e2) towards e1 where the LV outflow is
        self.outflow_angle = rng.uniform(110.0, 135.0)

    def outflow_direction(self) -> np.ndarray:
        """Unit LPS vector, perpendicular to the long axis, from the LV axis towards the LV outflow."""
        a = np.deg2rad(self.outflow_angle)
        return np.cos(a) * self.e2 + np.sin(a) * self.rv_direction

    # ---- analytic geometry --------------------------------------------------------------------
    @property
    def apex(self) -> np.ndarray:
        """Epicardial apex (LPS mm); the same point at ED and ES."""
        return self.base_center + self.shape.l_epi * self.long_axis

    def to_heart(self, points: np.ndarray) -> np.ndarray:
        """LPS points -> heart-frame coordinates ``(x1, x2, z)`` of this phase."""
        return np.dot(np.asarray(points, float) - self.base_center, self.frame)

    def to_lps(self, local: np.ndarray) -> np.ndarray:
        return np.asarray(local, float) @ self.frame.T + self.base_center

    def _profile(self, z: np.ndarray, length: float) -> np.ndarray:
        t = np.clip(z / length, 0.0, 1.0)
        return (1.0 - t**self.p) ** (1.0 / self.p)

    def _angular(self, theta: np.ndarray) -> np.ndarray:
        h = self.harmonics
        return 1.0 + h["a2"] * np.cos(2 * (theta - h["phi2"])) + h["a3"] * np.cos(3 * (theta - h["phi3"]))

    def _longitudinal(self, t: np.ndarray) -> np.ndarray:
        h = self.harmonics
        return 1.0 + h["c1"] * (t - 0.5) + h["c2"] * np.sin(np.pi * t)

    def _radius(self, z, theta, r, length, shape: Shape):
        """LV surface radius at level ``z`` and angle ``theta`` (0 beyond the apex)."""
        radius = r * self._angular(theta) * self._longitudinal(z / shape.l_epi) * self._profile(z, length)
        return np.where((z >= 0) & (z <= length), radius, 0.0)

    def cap_volume(self, r: float, length: float, l_epi: float) -> float:
        """Analytic volume (mm^3) of a cap ``r, length`` (angular harmonics integrate to ``1 + a^2/2``)."""
        h = self.harmonics
        angular = 1.0 + 0.5 * (h["a2"] ** 2 + h["a3"] ** 2)
        z = (_GAUSS_NODES + 1.0) * length / 2.0  # Gauss-Legendre on [0, length]
        area = (self._longitudinal(z / l_epi) * self._profile(z, length)) ** 2
        return float(np.pi * r * r * angular * (area @ _GAUSS_WEIGHTS) * length / 2.0)

    def _regions(self, local: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean masks of the ventricles (and their walls, for the image) at heart-frame points."""
        s = self.shape
        x1, x2, z = local[..., 0], local[..., 1], local[..., 2]
        rho = np.hypot(x1, x2)
        below_base = z >= 0
        # the factors of _radius shared by the two LV surfaces and the RV's level, evaluated once (same products)
        angular, longitudinal = self._angular(np.arctan2(x2, x1)), self._longitudinal(z / s.l_epi)
        profile_epi = self._profile(z, s.l_epi)

        def radius(r: float, length: float, profile: np.ndarray) -> np.ndarray:
            return np.where((z >= 0) & (z <= length), r * angular * longitudinal * profile, 0.0)

        endo = below_base & (rho < radius(s.r_endo, s.l_endo, self._profile(z, s.l_endo)))
        epi = below_base & (rho < radius(s.r_epi, s.l_epi, profile_epi))
        # RV: per level an ellipse from -rv_inner*r_epi to r_epi + width along e1, minus the LV
        r_mean = s.r_epi * longitudinal * profile_epi
        width = s.rv_width * np.sqrt(np.clip(1.0 - (z / s.l_rv) ** 2, 0.0, None))
        regions = {"endo": endo, "epi": epi}
        for name, extra in (("rv", 0.0), ("rv_wall", 3.5)):
            outer = r_mean + width + extra
            inner = -self.rv_inner * r_mean
            centre, half = (outer + inner) / 2, np.maximum((outer - inner) / 2, 1e-6)
            breadth = self.rv_breadth * (r_mean + width) + extra
            inside = ((x1 - centre) / half) ** 2 + (x2 / np.maximum(breadth, 1e-6)) ** 2 < 1.0
            level = below_base & (z < s.l_rv) if name == "rv" else below_base & (z < s.l_rv + extra)
            # the crescent's tips stop short of the 2ch plane (x1 = 0): insertion points at < 90 deg
            regions[name] = inside & level & ~epi & (x1 > 0.05 * r_mean)
        regions["rv"] &= width > 0
        return regions

    def labels_at(self, points: np.ndarray) -> np.ndarray:
        """Project labels (0 bg, 1 LV cavity, 2 LV myocardium, 3 RV cavity) at LPS points ``(..., 3)``."""
        points = np.asarray(points, float)
        flat = points.reshape(-1, 3)
        out = np.zeros(len(flat), np.uint8)
        for start in range(0, len(flat), _CHUNK):
            local = self.to_heart(flat[start : start + _CHUNK])
            near = self._near(local)
            r = self._regions(local[near])
            block = np.zeros(len(r["epi"]), np.uint8)
            block[r["rv"]] = 3
            block[r["epi"]] = 2
            block[r["endo"]] = 1
            out[start : start + _CHUNK][near] = block
        return out.reshape(points.shape[:-1])

    def box(self, pad: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
        """Heart-frame corners ``(low, high)`` of a box holding both ventricles and walls, plus ``pad`` mm."""
        s = self.shape
        lv = s.r_epi * 1.15  # largest epicardial radius the harmonics allow
        rv = lv + s.rv_width + 3.5  # RV wall included
        low = np.array([-lv, -1.2 * rv, 0.0]) - pad
        high = np.array([rv, 1.2 * rv, s.l_epi]) + pad
        return low, high

    def _near(self, local: np.ndarray, pad: float = 2.0) -> np.ndarray:
        low, high = self.box(pad)
        return np.all((local > low) & (local < high), axis=-1)

    # ---- appearance ---------------------------------------------------------------------------
    def intensity_at(self, points: np.ndarray, bias: bool = True) -> np.ndarray:
        """Noiseless bSSFP-like magnitude at LPS points (times the coil bias unless ``bias=False``)."""
        points = np.asarray(points, float)
        flat = points.reshape(-1, 3)
        out = np.empty(len(flat), np.float32)
        for start in range(0, len(flat), _CHUNK):
            out[start : start + _CHUNK] = self._intensity(flat[start : start + _CHUNK], bias)
        return out.reshape(points.shape[:-1])

    def _intensity(self, p: np.ndarray, bias: bool) -> np.ndarray:
        s, f = self.shape, self.fields
        texture, fat_field = f["texture"](p), f["fat"](p)
        out = np.full(len(p), 0.02)  # air
        # body: elliptic cylinder along S-I, subcutaneous fat under the skin, muscle inside
        b = p[:, :2] - self.body_center[:2]
        depth = 1.0 - np.hypot(b[:, 0] / self.body_axes[0], b[:, 1] / self.body_axes[1])
        body = depth > 0
        out[body] = 0.36 + 0.06 * f["tissue"](p[body]) + 0.03 * texture[body]
        fat = body & (depth < 0.11 + 0.03 * fat_field)
        out[fat] = 0.85 + 0.04 * texture[fat]
        # lungs (dark), vertebra and descending aorta
        for centre, axes in (((-85, 15, 0), (60, 85, 150)), ((90, 25, 0), (55, 80, 150))):
            lung = np.sum(((p - self.body_center - centre) / axes) ** 2, axis=1) < 1.0
            out[lung] = 0.04 + 0.015 * texture[lung]
        for centre, radius, value in (((0, 75, 0), 18.0, 0.5), ((0, 99, 0), 7.0, 0.9), ((28, 55, 0), 11.0, self.blood)):
            disc = np.hypot(*(p[:, :2] - self.body_center[:2] - centre[:2]).T) < radius
            out[disc] = value + 0.03 * texture[disc]
        # mediastinum around the heart: tissue with patches of bright epicardial fat
        local = self.to_heart(p)
        envelope = np.array([s.r_epi + s.rv_width + 12.0, s.r_epi + 22.0, 0.5 * s.l_epi + 45.0])
        centre = np.array([8.0, 0.0, 0.5 * s.l_epi - 20.0])
        around = np.sum(((local - centre) / envelope) ** 2, axis=1) < 1.0
        out[around] = 0.38 + 0.42 / (1.0 + np.exp(-3.0 * fat_field[around] - 1.0)) + 0.03 * texture[around]
        # aortic root and atria above the base plane (blood, atria with a thin dark wall)
        above = local[:, 2] < 0
        angle = np.deg2rad(self.outflow_angle)
        root = 0.45 * s.r_endo * np.array([np.sin(angle), np.cos(angle)])
        aorta = above & (local[:, 2] > -45.0) & (np.hypot(*(local[:, :2] - root).T) < 11.0)
        out[aorta] = self.blood + 0.03 * texture[aorta]
        chambers = (
            ((-10.0, 14.0, -22.0), (26.0, 28.0, 24.0)),  # LA, behind the LV base
            ((s.r_epi + 10.0, -10.0, -20.0), (22.0, 26.0, 22.0)),  # RA, on the RV side
        )
        for centre, axes in chambers:
            d = np.sum(((local - centre) / axes) ** 2, axis=1)
            wall, cavity = above & (d < 1.2), above & (d < 1.0)
            out[wall & ~aorta] = self.muscle
            out[cavity] = self.blood + 0.03 * texture[cavity]
        # ventricles
        near = np.flatnonzero(self._near(local))
        r = self._regions(local[near])
        r["papillary"] = self._papillary(local[near]) & r["endo"]
        for name, value, amplitude in (
            ("rv_wall", self.muscle, 0.02), ("rv", self.blood, 0.03), ("epi", self.muscle, 0.025),
            ("endo", self.blood, 0.03), ("papillary", self.muscle + 0.05, 0.0),
        ):  # fmt: skip
            at = near[r[name]]
            out[at] = value + amplitude * texture[at]
        if bias:
            anterior = np.clip(1.0 - 0.0025 * (p[:, 1] - self.body_center[1] + 60.0), 0.7, 1.3)
            out *= np.clip(np.exp(0.12 * f["bias"](p)) * anterior, 0.5, 1.5)
        return out.astype(np.float32)

    def _papillary(self, local: np.ndarray) -> np.ndarray:
        """Two papillary muscles (image only: labelled as cavity, as in ACDC/M&Ms)."""
        s = self.shape
        z = local[:, 2]
        mask = np.zeros(len(local), bool)
        for angle in (np.deg2rad(135.0), np.deg2rad(-135.0)):
            level = (z > 0.3 * s.l_endo) & (z < 0.72 * s.l_endo)
            at = 0.62 * s.r_endo * self._profile(z, s.l_endo)
            d = np.hypot(local[:, 0] - at * np.cos(angle), local[:, 1] - at * np.sin(angle))
            mask |= level & (d < 4.5)
        return mask

    # ---- volumes --------------------------------------------------------------------------------
    def grid(self, spacing: float = 1.0, margin: float = 10.0) -> sitk.Image:
        """An empty axis-aligned LPS grid (uint8) covering both ventricles plus ``margin`` mm."""
        if spacing <= 0:
            raise InputError(f"phantom volume spacing must be positive, got {spacing}")
        low, high = self.box(pad=0.0)
        corners = np.stack(np.meshgrid(*zip(low, high), indexing="ij"), axis=-1).reshape(-1, 3)
        lps = self.to_lps(corners)
        low = np.floor((lps.min(axis=0) - margin) / spacing) * spacing
        high = np.ceil((lps.max(axis=0) + margin) / spacing) * spacing
        size = np.round((high - low) / spacing).astype(int) + 1
        image = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
        image.SetSpacing((spacing,) * 3)
        image.SetOrigin(tuple(low.tolist()))
        return image

    def truth_volume(self, spacing: float = 1.0, margin: float = 10.0) -> sitk.Image:
        """uint8 label volume (project convention) sampled at the voxel centres of :meth:`grid`."""
        reference = self.grid(spacing, margin)
        inside = self._in_box(reference)
        index = np.argwhere(inside)[:, ::-1]  # (i, j, k) of the voxels inside the heart box
        points = np.array(reference.GetOrigin()) + index * spacing
        array = np.zeros(inside.shape, np.uint8)
        array[inside] = self.labels_at(points)
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        return image

    def _in_box(self, reference: sitk.Image) -> np.ndarray:
        """Voxels of an axis-aligned grid whose centre lies in :meth:`box`, shaped like its array.

        Labels are zero outside the box; the heart frame is linear in the column index ``i``, so
        each grid row holds one interval of inside voxels, found without transforming every voxel.
        """
        low, high = self.box(pad=1.0)
        size, spacing = reference.GetSize(), reference.GetSpacing()[0]
        k, j = np.meshgrid(np.arange(size[2]), np.arange(size[1]), indexing="ij")
        start = self.to_heart(np.array(reference.GetOrigin()))  # heart coordinates of voxel (0, 0, 0)
        first = start + spacing * (j[..., None] * self.frame[1] + k[..., None] * self.frame[2])
        step = spacing * self.frame[0]  # change per column
        lo, hi = np.full(k.shape, -np.inf), np.full(k.shape, np.inf)
        for c in range(3):
            if abs(step[c]) < 1e-12:
                outside = (first[..., c] <= low[c]) | (first[..., c] >= high[c])
                hi[outside] = -np.inf
                continue
            a, b = (low[c] - first[..., c]) / step[c], (high[c] - first[..., c]) / step[c]
            lo, hi = np.maximum(lo, np.minimum(a, b)), np.minimum(hi, np.maximum(a, b))
        i = np.arange(size[0])
        return (i >= lo[..., None]) & (i <= hi[..., None])

    def image_volume(
        self, spacing: float = 1.0, margin: float = 10.0, noise_sigma: float = 0.04, noise_seed: int = 0
    ) -> sitk.Image:
        """float32 image (coil bias, Rician noise) on the same grid as :meth:`truth_volume`."""
        image = self._sample(self.grid(spacing, margin), self.intensity_at, np.float32)
        if noise_sigma > 0:
            rng = np.random.default_rng([self.seed, 7, noise_seed])
            noisy = sitk.GetImageFromArray(rician(sitk.GetArrayFromImage(image), noise_sigma, rng))
            noisy.CopyInformation(image)
            image = noisy
        return image

    @staticmethod
    def _sample(reference: sitk.Image, function, dtype) -> sitk.Image:
        """``function(points)`` at the voxel centres of an axis-aligned grid, a slab of planes at a time."""
        size, spacing, origin = reference.GetSize(), reference.GetSpacing(), np.array(reference.GetOrigin())
        axes = [origin[d] + spacing[d] * np.arange(size[d]) for d in range(3)]
        out = np.empty(size[::-1], dtype)
        step = max(1, _CHUNK // (size[0] * size[1]))
        for k in range(0, size[2], step):
            z, y, x = np.meshgrid(axes[2][k : k + step], axes[1], axes[0], indexing="ij")
            out[k : k + step] = function(np.stack([x, y, z], axis=-1))
        image = sitk.GetImageFromArray(out)
        image.CopyInformation(reference)
        return image

    def volumes_ml(self, phase: str | None = None, spacing: float = 1.0) -> dict[str, float]:
        """Label volumes (ml) integrated on a ``spacing`` grid aligned with the heart frame."""
        return dict(_volumes_ml(self.seed, phase or self.phase, float(spacing)))

    def truth(self) -> dict:
        """What the phantom is, as JSON-able values (sizes in mm, volumes in ml)."""
        ed, es = self.volumes_ml("ED"), self.volumes_ml("ES")
        s = self.shape
        return {
            "seed": self.seed,
            "phase": self.phase,
            "labels": {"1": "LV cavity", "2": "LV myocardium", "3": "RV cavity"},
            "coordinates": "LPS mm",
            "base_center": [round(float(v), 4) for v in self.base_center],
            "apex": [round(float(v), 4) for v in self.apex],
            "long_axis": [round(float(v), 6) for v in self.long_axis],
            "rv_direction": [round(float(v), 6) for v in self.rv_direction],
            "shape": {k: (list(v) if isinstance(v, tuple) else round(float(v), 4)) for k, v in asdict(s).items()},
            "wall_thickness_mm": round(s.r_epi - s.r_endo, 3),
            "lv_diameter_base_mm": round(2 * s.r_endo, 3),
            "base_apex_length_mm": round(s.l_epi, 3),
            "profile_exponent": round(self.p, 4),
            "harmonics": {k: round(float(v), 5) for k, v in self.harmonics.items()},
            "trigger_time_ms": self.trigger_times_ms[self.phase],
            "volumes_ml": ed if self.phase == "ED" else es,
            "volumes_ml_ED": ed,
            "volumes_ml_ES": es,
            "ef": round(1.0 - es["LV"] / ed["LV"], 4),
            "ef_target": round(self.target_ef, 4),
            "volume_grid": "1 mm grid aligned with the heart frame",
        }

    def with_phase(self, phase: str) -> "MRPhantom":
        return MRPhantom(self.seed, phase)


@lru_cache(maxsize=32)
def _volumes_ml(seed: int, phase: str, spacing: float) -> dict[str, float]:
    """Cached: a phantom is a pure function of its seed and phase."""
    phantom = MRPhantom(seed, phase)
    low, high = phantom.box(pad=0.0)
    axes = [np.arange(a + spacing / 2, b, spacing) for a, b in zip(low, high)]
    local = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    counts = np.bincount(phantom.labels_at(phantom.to_lps(local)).ravel(), minlength=4)
    return {name: float(counts[v] * spacing**3 / 1000.0) for v, name in ((1, "LV"), (2, "MYO"), (3, "RV"))}
