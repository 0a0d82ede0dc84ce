"""Activation phantom: time to onset of circumferential shortening (TOS) over the LV, and DENSE-like strain.

The field lives in the heart's own cylindrical frame, so it attaches to any LV:

* ``angle`` (radians) is measured around the long axis from the anterior RV insertion point, running
  through the septum first, i.e. in AHA segment order (anteroseptal, inferoseptal, inferior,
  inferolateral, anterolateral, anterior): counter-clockwise on the usual short-axis view seen from
  the apex (right-handed about the base -> apex axis). Sectors of DENSE strain matrices count from the
  same point in the same direction, so 18 sectors make 3 per AHA segment.
* ``height`` is the normalised long-axis position, 0 at the base and 1 at the apex.

Patterns: ``"lbbb"`` (left bundle branch block: septum first, ~20-35 ms; latest region posterolateral,
~120-160 ms; smooth in angle and height; late segments pre-stretch before they shorten) and
``"normal"`` (synchronous: every segment within ~25 ms of the others). Each seed draws the latest
region's place and delay. Strain frames sit at ``frame_ms * (1, 2, ...)``: the first DENSE frame is
one frame after the R wave, which is why measured TOS has a floor of one frame.
"""

from __future__ import annotations

import numpy as np

from ..activation.tos import frame_times  # the DENSE frame timing the TOS detector assumes: one definition
from ..errors import InputError

#: AHA ring segments in sector order (each spans 60 degrees from the anterior RV insertion).
AHA_RING_ORDER = ("anteroseptal", "inferoseptal", "inferior", "inferolateral", "anterolateral", "anterior")
PATTERNS = ("lbbb", "normal")


class ActivationPhantom:
    """Seeded TOS field and the circumferential strain (Ecc) it implies."""

    def __init__(self, seed: int = 0, pattern: str = "lbbb") -> None:
        if pattern not in PATTERNS:
            raise InputError(f"activation phantom: unknown pattern {pattern!r}; use one of {PATTERNS}")
        self.seed, self.pattern = int(seed), pattern
        rng = np.random.default_rng([self.seed, PATTERNS.index(pattern)])
        if pattern == "lbbb":
            self.t_early = rng.uniform(20, 32)
            self.t_late = rng.uniform(130, 165)
            self.late_angle = np.deg2rad(rng.uniform(200, 250))  # inferolateral / lateral wall
            self.late_height = rng.uniform(0.2, 0.5)  # basal to mid
        else:
            self.t_early = rng.uniform(25, 40)
            self.t_late = self.t_early + rng.uniform(8, 20)
            self.late_angle = rng.uniform(0, 2 * np.pi)
            self.late_height = rng.uniform(0, 1)
        self.sharpness = rng.uniform(0.7, 1.4)  # narrower late region for larger values
        self.height_falloff = rng.uniform(0.2, 0.5)
        self.ripple = [(rng.uniform(-2, 2), k, rng.uniform(0, 2 * np.pi)) for k in (1, 2, 3)]  # ms, harmonic, phase
        self.peak_strain = rng.uniform(0.16, 0.185)
        self.peak_phase = rng.uniform(0, 2 * np.pi)
        self.stretch = rng.uniform(0.02, 0.04) if pattern == "lbbb" else 0.0

    # ---- TOS field ---------------------------------------------------------------------------
    def tos_at(self, angle_rad, height) -> np.ndarray:
        """TOS in ms at cardiac coordinates (broadcast); heights outside [0, 1] are clipped."""
        angle = np.asarray(angle_rad, float)
        h = np.clip(np.asarray(height, float), 0.0, 1.0)
        lobe = ((1 + np.cos(angle - self.late_angle)) / 2) ** self.sharpness
        level = np.clip(1 - self.height_falloff * (h - self.late_height) ** 2, 0, 1)
        ripple = sum(a * np.cos(k * angle + p) for a, k, p in self.ripple) * (1 - 0.3 * h)
        return self.t_early + (self.t_late - self.t_early) * lobe * level + ripple

    def sector_tos(self, n_slices: int, n_sectors: int = 18, heights=None, angle_offsets=None) -> np.ndarray:
        """TOS (ms) at the sector centres, shaped ``(n_slices, n_sectors)``, slices base to apex.

        ``angle_offsets`` (radians, one per slice): where each slice's own anterior RV insertion lies
        in this field's angle (DENSE counts sectors per slice from that slice's insertion point).
        """
        h = default_heights(n_slices) if heights is None else _heights(heights, n_slices)
        offsets = np.zeros(n_slices) if angle_offsets is None else _heights(angle_offsets, n_slices, "angle offsets")
        return self.tos_at(sector_angles(n_sectors)[None, :] + offsets[:, None], h[:, None])

    # ---- strain ------------------------------------------------------------------------------
    def strain_matrices(
        self,
        n_slices: int,
        n_sectors: int = 18,
        n_frames: int = 40,
        frame_ms: float = 17.0,
        heights=None,
        noise: float = 0.004,
        angle_offsets=None,
    ) -> np.ndarray:
        """Mid-wall Ecc shaped ``(n_slices, n_sectors, n_frames)``; shortening is negative.

        Per sector: ~0 before onset (late LBBB sectors stretch up to +2..4 %), shortening from the
        sector TOS to a peak of -0.15..-0.20 (later for late sectors), relaxation back to 0 in
        ~180 ms, plus Gaussian noise of sd ``noise`` (seeded).
        """
        if n_frames < 8 or frame_ms <= 0:
            raise InputError(f"strain matrices: need >= 8 frames and frame_ms > 0, got {n_frames}, {frame_ms}")
        tos = self.sector_tos(n_slices, n_sectors, heights, angle_offsets)[..., None]
        t = frame_times(n_frames, frame_ms)
        angles = sector_angles(n_sectors)[None, :, None]  # peak-strain ripple stays in slice angles
        peak = self.peak_strain * (1 + 0.05 * np.cos(angles - self.peak_phase))
        stretch = self.stretch * np.clip((tos - 50) / 80, 0, 1)
        to_peak = np.clip(300 - 0.6 * (tos - 20), 170, 320)  # late segments peak later (post-systolic)
        relax = 180.0
        tau = (t - tos) / to_peak
        before = stretch * np.sin(0.5 * np.pi * np.clip(t / tos, 0, 1)) ** 2
        falling = stretch - (stretch + peak) * np.sin(0.5 * np.pi * np.clip(tau, 0, 1))
        back = -peak * 0.5 * (1 + np.cos(np.pi * np.clip((t - tos - to_peak) / relax, 0, 1)))
        strain = np.where(t < tos, before, np.where(tau <= 1, falling, back))
        rng = np.random.default_rng([self.seed, PATTERNS.index(self.pattern), n_slices, n_sectors, n_frames])
        return strain + rng.normal(0.0, noise, strain.shape)

    def truth(self) -> dict:
        """JSON-able parameters and conventions."""
        return {
            "pattern": self.pattern,
            "seed": self.seed,
            "t_early_ms": round(float(self.t_early), 2),
            "t_late_ms": round(float(self.t_late), 2),
            "late_angle_deg": round(float(np.rad2deg(self.late_angle)) % 360, 2),
            "late_height": round(float(self.late_height), 3),
            "peak_strain": round(-float(self.peak_strain), 4),
            "pre_stretch": round(float(self.stretch), 4),
            "angle_convention": "radians from the anterior RV insertion, in AHA order (septum first)",
            "height_convention": "0 base, 1 apex",
            "aha_ring_order": list(AHA_RING_ORDER),
            "frame_times": "frame k (0-based) at (k + 1) * frame_ms",
        }


# ---- frames and sectors --------------------------------------------------------------------------
def sector_angles(n_sectors: int = 18) -> np.ndarray:
    """Centre angle (radians) of each sector counted from the anterior RV insertion."""
    if n_sectors < 1:
        raise InputError(f"sectors: need at least one sector, got {n_sectors}")
    return (np.arange(n_sectors) + 0.5) * 2 * np.pi / n_sectors


def default_heights(n_slices: int) -> np.ndarray:
    """Evenly spaced short-axis levels from near the base (0.2) to near the apex (0.8)."""
    return np.linspace(0.2, 0.8, n_slices) if n_slices > 1 else np.array([0.5])


def _heights(heights, n_slices: int, what: str = "heights") -> np.ndarray:
    h = np.asarray(heights, float).ravel()
    if len(h) != n_slices:
        raise InputError(f"activation phantom: {len(h)} {what} given for {n_slices} slices; give one per slice")
    return h


def lv_cylindrical_coords(points, base, apex, rv_insertion_dir) -> tuple[np.ndarray, np.ndarray]:
    """(angle, height) of LPS points ``(..., 3)`` in the frame above.

    ``base`` and ``apex`` are the LV base centre and apex (mm); ``rv_insertion_dir`` points from the
    long axis towards the anterior RV insertion (a point minus ``base`` works too: it is projected).
    Heights are not clipped: < 0 above the base, > 1 beyond the apex.
    """
    p = np.asarray(points, float)
    base, apex = np.asarray(base, float), np.asarray(apex, float)
    axis = apex - base
    length = float(np.linalg.norm(axis))
    if length == 0:
        raise InputError("LV frame: base and apex are the same point; give two distinct points")
    axis = axis / length
    e0 = np.asarray(rv_insertion_dir, float)
    e0 = e0 - (e0 @ axis) * axis
    if np.linalg.norm(e0) < 1e-6:
        raise InputError("LV frame: the RV insertion direction lies along the long axis; give one across it")
    e0 = e0 / np.linalg.norm(e0)
    e1 = np.cross(axis, e0)
    d = p - base
    angle = np.mod(np.arctan2(d @ e1, d @ e0), 2 * np.pi)
    return angle, (d @ axis) / length
