"""An LMA test case with known answers: an MR phantom's SAX stack with an activation phantom attached.

The activation field lives in the phantom's true cardiac frame: the straight long axis from the
base centre to the apex, heights from the true base-apex length, angle 0 at the true anterior RV
insertion of the mid slice. Each slice's strain counts its sectors from that slice's own true
insertion (as DENSE does), found on the analytic labels: the RV (label 3) on a ring 0.8 mm outside
the epicardium is an arc, whose first angle in the activation sense is the anterior insertion.
Apical slices without RV take the last insertion found (as a DENSE user would).
"""

from __future__ import annotations

import numpy as np

from ..geometry.stack import SliceStack
from ..phantoms.activation import ActivationPhantom, lv_cylindrical_coords
from ..phantoms.mr import MRPhantom
from ..phantoms.scanner import acquire_sax
from .sectors import LVFrame, lv_frame

#: a quick scan: noiseless, one sub-plane, 96 x 96 pixels of 2 mm
QUICK_SCAN = {"noise_sigma": 0.0, "sub_planes": 1, "matrix": 96, "pixel_mm": 2.0}


def true_insertion_theta(phantom: MRPhantom, z: float) -> float | None:
    """Heart-frame angle (rad, atan2(x2, x1)) of the anterior RV insertion at level ``z``; None without RV."""
    s = phantom.shape
    theta = np.linspace(-np.pi, np.pi, 3600, endpoint=False)
    r = phantom._radius(np.full_like(theta, z), theta, s.r_epi, s.l_epi, s) + 0.8
    local = np.stack([r * np.cos(theta), r * np.sin(theta), np.full_like(theta, z)], -1)
    rv = np.sort(theta[phantom.labels_at(phantom.to_lps(local)) == 3])
    if len(rv) == 0:
        return None
    gaps = np.diff(np.append(rv, rv[0] + 2 * np.pi))
    return float(rv[(np.argmax(gaps) + 1) % len(rv)])


def heart_dir(phantom: MRPhantom, theta: float) -> np.ndarray:
    """LPS unit vector at heart-frame angle ``theta`` (perpendicular to the long axis)."""
    return np.cos(theta) * phantom.rv_direction + np.sin(theta) * phantom.e2


class PhantomCase:
    """Stack, strain and truth of one (MR seed, activation seed, pattern)."""

    def __init__(self, seed: int = 0, activation_seed: int = 3, pattern: str = "lbbb", n_frames: int = 40,
                 frame_ms: float = 17.0, noise: float = 0.004, **scan):  # fmt: skip
        self.phantom = ph = MRPhantom(seed)
        self.stack: SliceStack = acquire_sax(ph, **{**QUICK_SCAN, **scan})
        self.frame: LVFrame = lv_frame(self.stack)
        self.levels = np.array([(c - ph.base_center) @ ph.long_axis for c in self.frame.centres])
        thetas = [true_insertion_theta(ph, z) for z in self.levels]
        found = [t for t in thetas if t is not None]
        self.has_rv = np.array([t is not None for t in thetas])
        self.thetas = np.array([t if t is not None else found[-1] for t in thetas])
        reference = self.thetas[len(self.thetas) // 2]
        self.e0 = heart_dir(ph, reference)
        self.offsets = self.thetas - reference
        self.heights = self.levels / ph.shape.l_epi
        self.frame_ms = frame_ms
        self.activation = ActivationPhantom(activation_seed, pattern)
        n = len(self.levels)
        self.strain = self.activation.strain_matrices(n, 18, n_frames, frame_ms, heights=self.heights, noise=noise,
                                                      angle_offsets=self.offsets)  # fmt: skip
        self.sector_truth = np.maximum(self.activation.sector_tos(n, 18, self.heights, self.offsets), frame_ms)

    def truth_at(self, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """True (TOS ms, angle rad, height) at LPS points."""
        a, h = lv_cylindrical_coords(points, self.phantom.base_center, self.phantom.apex, self.e0)
        return self.activation.tos_at(a, h), a, h
