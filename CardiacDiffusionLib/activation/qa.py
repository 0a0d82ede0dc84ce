"""QA flags of an LMA run: each flag is ``{"code", "severity", "message"}`` and goes into lma.json.

Hard failures (fewer than 3 slices with myocardium, missing RV insertion, wrong strain shape, TOS
typed outside the physiological range or most of a measured map outside it, strain without shortening
in most curves) are InputErrors; these are the warnings a user must see next to a result that was
still produced.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..geometry.stack import SliceStack, anatomy_says_normal_points_to_apex, slice_order_warning
from .sectors import LVFrame
from .tos import TOS_RANGE_MS

MIN_SLICES = 3
#: fewer labelled slices than this give a coarse 3D shape (flag, not an error)
FEW_SLICES = 6
#: LV centres further than this from a straight line through them suggest breath-hold misregistration
CENTRE_LINE_TOLERANCE_MM = 4.0
#: peak shortening smaller than this (|Ecc|) carries no timing: the curve is noise
MIN_SHORTENING = 0.03
#: below this fraction of curves with shortening the map has no timing to show: its "late" sectors are
#: those whose noise peaks last and a lead suggestion would be arbitrary, so the run is refused rather
#: than flagged (a heart mostly without shortening is no map to place a lead on)
MIN_RELIABLE_FRACTION = 0.5
#: the patient's anterior direction (LPS)
ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])


def flag(code: str, message: str, severity: str = "warning") -> dict:
    return {"code": code, "severity": severity, "message": message}


def require_slices(count: int, what: str) -> None:
    """InputError below :data:`MIN_SLICES` (an LMA map needs basal, mid and apical levels)."""
    if count < MIN_SLICES:
        raise InputError(
            f"{what}: {count} slice(s); an LMA map needs at least {MIN_SLICES} (basal, mid and apical): add slices"
        )


def coverage_flags(frame: LVFrame, tos_frame: LVFrame) -> list[dict]:
    """Few labelled slices for the 3D shape; TOS slices that miss a third of the base-apex length."""
    out = []
    if len(frame.slices) < FEW_SLICES:
        out.append(flag("few_slices", f"{len(frame.slices)} slices hold myocardium; the 3D shape from fewer than "
                        f"{FEW_SLICES} is coarse"))  # fmt: skip
    h = tos_frame.slice_heights()
    if h.min() > 1 / 3 or h.max() < 2 / 3:
        out.append(flag("partial_coverage", f"slices cover heights {h.min():.2f}-{h.max():.2f} of base-apex; "
                        "segments outside take the nearest slice's values"))  # fmt: skip
    return out


def alignment_flags(stack: SliceStack, frame: LVFrame) -> list[dict]:
    """Slices shifted in the stack's own geometry, and LV centres off a straight long axis."""
    out = []
    if stack.has_shifts():
        shift = float(np.abs(stack.shifts).max())
        out.append(flag("slices_shifted", f"slice origins are shifted in-plane against each other by up to "
                        f"{shift:.1f} mm (breath-hold misregistration?)"))  # fmt: skip
    if len(frame.positions) >= 3:
        fit = np.polynomial.polynomial.polyfit(frame.positions, frame.centres, 1)
        line = np.polynomial.polynomial.polyval(frame.positions, fit).T
        off = float(np.linalg.norm(frame.centres - line, axis=1).max())
        if off > CENTRE_LINE_TOLERANCE_MM:
            out.append(flag("slices_misaligned", f"LV centres lie up to {off:.1f} mm off a straight long axis "
                            f"(tolerance {CENTRE_LINE_TOLERANCE_MM:g} mm): slices may be misregistered"))  # fmt: skip
    return out


def anatomy_flags(stack: SliceStack, frame: LVFrame) -> list[dict]:
    """Where the geometry is true, two checks against the patient's anatomy. Through the plane: the heart's
    area must shrink towards the apex, else the slices are likely stored in reverse order against their
    header (``slice_order_reversed``; base and apex, and the AHA rings, swap). In the plane: angle 0, the
    anterior RV insertion, must lie on the patient's anterior side. In a mirrored image (a flipped axis in the
    file, labels made in another orientation) the rule that finds it (septum first, right-handed about base
    -> apex) takes the inferior insertion, and anterior and inferior segments swap. MR phantoms: 42-74 deg
    from anterior as they are, 106-140 deg mirrored."""
    if anatomy_says_normal_points_to_apex(stack) is None:
        return []  # orientation not stored: nothing to compare with (the reader says so)
    reversed_order = slice_order_warning(stack)
    out = [flag("slice_order_reversed", reversed_order)] if reversed_order else []
    anterior = ANTERIOR_LPS - (ANTERIOR_LPS @ frame.axis) * frame.axis
    if np.linalg.norm(anterior) < 0.3:
        return out  # a long axis close to antero-posterior: the plane holds too little of "anterior"
    cos = float(frame.e0 @ anterior / np.linalg.norm(anterior))
    angle = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    if angle <= 90.0:
        return out
    return out + [flag("anatomy_mismatch", f"the anterior RV insertion found lies {angle:.0f} deg from the "
                       "patient's anterior (expected within 90): the image or its labels may be mirrored (a flipped "
                       "axis in the file?); anterior and inferior segments, and the suggested lead segment, would be "
                       "swapped")]  # fmt: skip


def tos_flags(tos: np.ndarray) -> list[dict]:
    low, high = TOS_RANGE_MS
    bad = (tos < low) | (tos > high)
    if bad.any():
        return [flag("tos_out_of_range", f"{int(bad.sum())} sector TOS value(s) outside {low:g}-{high:g} ms "
                     f"(range {tos.min():.0f}-{tos.max():.0f} ms)")]  # fmt: skip
    return []


def strain_flags(strain: np.ndarray) -> list[dict]:
    weak = (strain.max(-1) - strain.min(-1)) < MIN_SHORTENING
    if weak.any():
        return [flag("strain_without_shortening", f"{int(weak.sum())} sector curve(s) shorten by less than "
                     f"{MIN_SHORTENING:.0%}: their TOS is unreliable (noise, scar or a bad contour)")]  # fmt: skip
    return []


def require_shortening(strain: np.ndarray, name: str = "strain") -> None:
    """InputError when fewer than :data:`MIN_RELIABLE_FRACTION` of the curves shorten by :data:`MIN_SHORTENING`."""
    reliable = (strain.max(-1) - strain.min(-1)) >= MIN_SHORTENING
    if reliable.mean() < MIN_RELIABLE_FRACTION:
        raise InputError(
            f"{name}: only {int(reliable.sum())} of {reliable.size} sector curves shorten by {MIN_SHORTENING:.0%} or "
            f"more (at least {MIN_RELIABLE_FRACTION:.0%} needed): without shortening there is no onset to time and "
            "no lead segment to suggest; check the strain export (Ecc fractions, one curve per sector over systole)"
        )


def jacobian_flags(displacement=None, jacobian_min: float | None = None) -> list[dict]:
    """Flag a deformation (displacement (B, 3, D, H, W) in voxels, or its min det J) that folds."""
    if displacement is not None:
        import torch

        from ..sadir.warp import jacobian_determinant

        disp = torch.as_tensor(np.asarray(displacement) if not torch.is_tensor(displacement) else displacement)
        if disp.ndim == 4:
            disp = disp[None]
        jacobian_min = float(jacobian_determinant(disp.double()).min())
    if jacobian_min is None:
        return []
    if not jacobian_min > 0:
        return [flag("jacobian_not_positive", f"the deformation folds (min Jacobian determinant {jacobian_min:.3g} "
                     "<= 0): topology of the atlas is not kept", severity="error")]  # fmt: skip
    return []
