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
from .sectors import LV, MYO, LVFrame, contact_arc, lv_frame, pixel_points
from .tos import TOS_RANGE_MS

MIN_SLICES = 3
#: fewer labelled slices than this give a coarse 3D shape (flag, not an error)
FEW_SLICES = 6
#: an inner slice's LV centre farther than this (in-plane) from the line through its two neighbours' centres is
#: flagged: a breath-hold shift moves one slice (or a group) against its neighbours; a curving long axis barely
#: bends that line, and the noisy apical and basal rings are never tested themselves. ACDC (160 volumes, nominal
#: 1.5 mm pixels, 10 mm gap): this jump is median 1.6 mm (p99 11.7, 1084 inner slices), fires on 37 volumes (22 of
#: 80 patients; in 15 at the same slice in ED and ES, labelled separately: the jump is in the images) where the
#: former rule (any centre > 4 mm off one straight line fitted through all) fired on 66; a 6 mm shift of one inner
#: slice (8 directions) is flagged in 93 % of ACDC cases (that line rule: 89 %), 4 mm in 54 %; one end slice shifted
#: is seen only through its neighbour (half the shift: 6 mm in 36 %). A bound of 4 mm fires on 47 (97 % of 6 mm
#: shifts found), 5 mm on 30 (86 %). MR phantoms 0-11: clean <= 0.44 mm, one slice shifted d mm jumps d mm, all
#: slices shifted up to 8 mm (scanner breath-hold model) 5.9-12.2 mm. Sunnybrook SC-HF-I-1: 3.8 mm, not flagged.
CENTRE_JUMP_TOLERANCE_MM = 4.5
#: peak shortening smaller than this (|Ecc|) carries no timing: the curve is noise
MIN_SHORTENING = 0.03
#: below this fraction of curves with shortening the map has no timing to show: its "late" sectors are
#: those whose noise peaks last and a lead suggestion would be arbitrary, so the run is refused rather
#: than flagged (a heart mostly without shortening is no map to place a lead on)
MIN_RELIABLE_FRACTION = 0.5
#: the patient's anterior direction (LPS)
ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])
#: a given --rv-insertion farther than this (in-plane, mm) from the LV myocardium of its slice is flagged. It lies
#: where the RV wall meets the septum, on the epicardial border: on MR phantoms 0-11 the analytic insertion is
#: within 2.0 mm of the labelled myocardium (76 slices); on ACDC (160 volumes, nominal 1.5 mm pixels) the label
#: insertion of the other phase (ED vs ES, same slice: a point clicked on the wrong frame) is within 10.6 mm of this
#: phase's myocardium (p99 7.5, 1014 slices). 20 mm is twice that; a point farther than it from every label is
#: called outside the heart.
INSERTION_DISTANCE_MM = 20.0
#: a given insertion more than this (deg) from the label-derived anterior insertion on its slice is flagged. ACDC
#: (160 volumes): the other phase's label insertion on the same slice differs by up to 36.2 deg (median 7.5, p99
#: 29.6, 1014 slices); per-slice insertions lie within 40.9 deg of their volume's mean (median 12.6); MR phantoms:
#: the label insertion is within 4.3 deg of the analytic one. A neighbouring slice's differs by up to 54 deg (p99
#: 29), so the point is compared on its own slice.
INSERTION_ANGLE_DEG = 45.0


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
    """Slices shifted in the stack's own geometry, and an LV centre that jumps against its neighbours'."""
    out = []
    if stack.has_shifts():
        shift = float(np.abs(stack.shifts).max())
        out.append(flag("slices_shifted", f"slice origins are shifted in-plane against each other by up to "
                        f"{shift:.1f} mm (breath-hold misregistration?)"))  # fmt: skip
    jumps = centre_jumps(frame)
    if len(jumps) and jumps.max() > CENTRE_JUMP_TOLERANCE_MM:
        i, count = int(np.argmax(jumps)), int((jumps > CENTRE_JUMP_TOLERANCE_MM).sum())
        more = f" ({count} slices beyond it)" if count > 1 else ""
        out.append(flag("slices_misaligned", f"the LV centre of slice {int(frame.slices[i + 1])} lies {jumps[i]:.1f} "
                        f"mm off the line through its neighbours' (tolerance {CENTRE_JUMP_TOLERANCE_MM:g} mm){more}: "
                        "slices may be misregistered (breath-hold shift)"))  # fmt: skip
    return out


def centre_jumps(frame: LVFrame) -> np.ndarray:
    """In-plane distance (mm) of each inner slice's LV centre from the line through its two neighbours' centres."""
    x, c = frame.positions, frame.centres
    w = ((x[1:-1] - x[:-2]) / (x[2:] - x[:-2]))[:, None]
    return np.linalg.norm(c[1:-1] - ((1 - w) * c[:-2] + w * c[2:]), axis=1)


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
    if "user" in frame.insertion_source:  # --rv-insertion: the point itself is the likelier mistake
        what, cause = "given (--rv-insertion)", "it may be the inferior insertion, or the image or its labels mirrored"
    else:
        what, cause = "found", "the image or its labels may be mirrored (a flipped axis in the file?)"
    return out + [flag("anatomy_mismatch", f"the anterior RV insertion {what} lies {angle:.0f} deg from the "
                       f"patient's anterior (expected within 90): {cause}; anterior and inferior segments, and the "
                       "suggested lead segment, would be swapped")]  # fmt: skip


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


def insertion_flags(stack: SliceStack, frame: LVFrame, points) -> list[dict]:
    """Flags for user-given anterior RV insertion ``points`` (LPS, one or one per slice; ``frame`` is the run's
    frame built from them): each point is checked on its nearest slice with myocardium. ``rv_insertion_far``: inside
    the LV cavity, or farther than :data:`INSERTION_DISTANCE_MM` from the LV myocardium (in the RV cavity, beside
    it, outside the heart). ``rv_insertion_angle`` (with an RV label): more than :data:`INSERTION_ANGLE_DEG` from
    the label's anterior insertion; named the inferior insertion when within the bound of the label's inferior
    end and nearer to it than to the anterior one by the bound, where the two ends lie at least twice the bound
    apart (a point between them is only turned)."""
    points = np.unique(np.asarray(points, float).reshape(-1, 3), axis=0)
    try:
        labelled = lv_frame(stack)  # the insertions the RV label gives
    except InputError:
        labelled = None  # no RV contact arc on any slice: nothing to compare the angle with
    far, turned = [], []
    for point in points:
        i = int(np.argmin(np.abs(frame.positions - point @ frame.axis)))
        text = ",".join(f"{v:g}" for v in point)
        problem = _distance_problem(stack, frame, i, point)
        if problem:
            far.append((problem[0], f"--rv-insertion {text}: {problem[1]}"))
        if labelled is not None:
            problem = _angle_problem(stack, frame, labelled, i, point)
            if problem:
                turned.append((problem[0], f"--rv-insertion {text}: {problem[1]}"))
    out = []
    for code, found, advice in (
        ("rv_insertion_far", far, "the anterior RV insertion lies where the RV wall meets the septum, on the LV's "
         "epicardial border"),
        ("rv_insertion_angle", turned, "every sector, AHA segment and the suggested lead segment turn with it"),
    ):  # fmt: skip
        if found:
            worst = max(found)[1]
            more = f" (and {len(found) - 1} more of the {len(points)} given points)" if len(found) > 1 else ""
            out.append(flag(code, f"{worst}{more}; {advice}: check the point, or leave --rv-insertion out to use "
                            "the RV label's"))  # fmt: skip
    return out


def _in_plane(stack: SliceStack, k: int, point: np.ndarray, values) -> float:
    """In-plane distance (mm) from ``point`` to the nearest pixel of slice ``k`` holding one of ``values``."""
    rc = np.argwhere(np.isin(stack.labels[k], values))
    if not len(rc):
        return np.inf
    d = pixel_points(stack, k, rc) - point
    d -= np.outer(d @ stack.normal, stack.normal)
    return float(np.linalg.norm(d, axis=1).min())


def _distance_problem(stack: SliceStack, frame: LVFrame, i: int, point: np.ndarray) -> tuple[float, str] | None:
    k = int(frame.slices[i])
    myo = _in_plane(stack, k, point, (MYO,))
    d = point - stack.origins[k]
    col, row = (int(round(d @ stack.row_dir / stack.pixel_spacing[0])),
                int(round(d @ stack.col_dir / stack.pixel_spacing[1])))  # fmt: skip
    rows, cols = stack.shape2d
    label = int(stack.labels[k, row, col]) if 0 <= row < rows and 0 <= col < cols else 0
    if label == LV and myo > 1.5 * max(stack.pixel_spacing):  # deeper than a pixel's diagonal
        return myo, f"lies inside the LV cavity on slice {k}, {myo:.0f} mm inside the myocardium"
    if myo <= INSERTION_DISTANCE_MM:
        return None
    anywhere = _in_plane(stack, k, point, (1, 2, 3))
    where = (f"outside the heart on slice {k}: {anywhere:.0f} mm from every label and" if anywhere > INSERTION_DISTANCE_MM
             else f"{'inside the RV cavity' if label == 3 else 'beside the heart'} on slice {k},")  # fmt: skip
    return myo, f"lies {where} {myo:.0f} mm from the LV myocardium (bound {INSERTION_DISTANCE_MM:g} mm)"


def _angle_problem(stack, frame: LVFrame, labelled: LVFrame, i: int, point) -> tuple[float, str] | None:
    """The point's angle against the label's anterior insertion on the nearest slice whose RV arc gives one."""
    rows = [j for j, source in enumerate(labelled.insertion_source) if source == "labels"]
    j = min(rows, key=lambda r: abs(labelled.positions[r] - labelled.positions[i]))
    k, centre = int(labelled.slices[j]), labelled.centres[j]
    anterior, arc = labelled.insertion_points[j], contact_arc(stack, k, centre, frame.e0, frame.e1)
    inferior, span = (arc[1], arc[2]) if arc is not None else (anterior, 0.0)

    def angle(p):  # whole degrees in the run's frame (as lma.json's rv_insertion_angle_deg), about this slice's centre
        d = p - centre
        return int(round(float(np.degrees(np.arctan2(d @ frame.e1, d @ frame.e0))))) + 0

    given, label, inferior_deg = angle(point), angle(anterior), angle(inferior)
    off = abs((given - label + 180) % 360 - 180)
    if off <= INSERTION_ANGLE_DEG:
        return None
    text = (f"on slice {k} it lies at {given} deg, {off} deg from the anterior RV insertion the RV label gives there "
            f"({label} deg; bound {INSERTION_ANGLE_DEG:g})")  # fmt: skip
    to_inferior = abs((given - inferior_deg + 180) % 360 - 180)
    if np.degrees(span) >= 2 * INSERTION_ANGLE_DEG and to_inferior <= INSERTION_ANGLE_DEG <= off - to_inferior:
        text += f": it looks like the inferior insertion ({inferior_deg} deg), not the anterior one"
    return off, text
