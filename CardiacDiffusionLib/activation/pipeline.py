"""The LMA workflow: labelled SAX slices + strain (or a TOS table) -> myocardium, painted mesh, bullseye.

``run_lma`` (library) and ``write_outputs`` (files, used by ``cardiac-diffusion lma``):

1. LV frame from the labels: long axis, LV centres, anterior RV insertion per slice (or given points);
2. TOS per sector: the onset detector or the learned regressor on strain ``(slices, 18, frames)``,
   or a clinician's CSV (slice, sector, tos_ms);
3. the 3D myocardium: shape-based interpolation of the slices (``shape``) or the SADIR atlas
   deformation (``sadir``, when that workflow is installed);
4. its surface painted with ``TOS_ms`` and ``late_activation``; AHA segments, bullseye and the
   suggested LV lead segment (decision support); QA flags throughout.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
from vtkmodules.vtkCommonDataModel import vtkPolyData

from ..errors import InputError
from ..geometry.stack import SliceStack
from ..utils.jsonfile import number_or_none, write_json
from . import qa
from .bullseye import (
    DISCLAIMER, check_scar, segment_of, segment_table, suggest_lead, write_bullseye_png, write_segments_csv,
)  # fmt: skip
from .mapping import (
    LATE_ARRAY, SEGMENT_ARRAY, TOS_ARRAY, add_point_array, mesh_points, myocardium_mesh, paint, sector_points,
    sector_polydata, write_stl, write_vtp,
)  # fmt: skip
from .sectors import MYO, LVFrame, lv_frame
from .tos import check_strain, check_tos_range, read_tos_csv, tos_from_strain, write_tos_csv

METHODS = ("shape", "sadir")


@dataclass
class LMAResult:
    labels: sitk.Image  # myocardium (value 2) in the stack's physical frame
    mesh: vtkPolyData  # LPS mm, point data TOS_ms, late_activation and aha_segment
    frame: LVFrame  # of the slices with TOS
    tos: np.ndarray  # (n_tos_slices, 18) ms
    sector_points: np.ndarray  # (n_tos_slices, 18, 3) mid-wall LPS points
    segments: list[dict]
    lead: dict
    lma: dict = field(default_factory=dict)
    sector_has_myocardium: np.ndarray | None = None  # (n_tos_slices, 18): False where the contour has a gap


def _tos_input(frame: LVFrame, strain, tos_csv, tos, frame_ms, tos_method, strain_slices, flags):
    """(stack indices of the TOS slices, TOS (n, 18), source description)."""
    given = [x is not None for x in (strain, tos_csv, tos)]
    if sum(given) != 1:
        raise InputError("LMA: give exactly one of strain matrices (--strain) or a TOS table (--tos-csv)")
    if strain is not None:
        indices = frame.slices if strain_slices is None else np.asarray(strain_slices, int)
        repeated = sorted({int(k) for k in indices if (indices == k).sum() > 1})
        if repeated:
            raise InputError(f"strain slices (--strain-slices): {repeated} given more than once; name each stack "
                             "slice once, one per strain row")  # fmt: skip
        s = check_strain(strain, n_slices=len(indices))
        qa.require_shortening(s)
        flags += qa.strain_flags(s)
        values = tos_from_strain(s, frame_ms, tos_method)
        check_tos_range(values, f"TOS from strain (frame_ms {frame_ms:g})", measured=True)
        source = {"kind": "strain", "method": tos_method, "frame_ms": frame_ms, "shape": list(s.shape)}
        if tos_method == "regressor":  # the shipped regressor (tos.tos_from_strain): which file made the TOS
            from ..models.store import model_provenance
            from .regressor import MODEL_NAME

            source["model"] = model_provenance(MODEL_NAME)
    else:
        table = read_tos_csv(tos_csv) if tos_csv is not None else {int(k): np.asarray(v, float) for k, v in tos.items()}
        if tos is not None:
            for k, v in table.items():
                if v.shape != (18,):
                    raise InputError(f"TOS slice {k}: expected 18 sector values, got shape {v.shape}")
                check_tos_range(v, f"TOS slice {k}")
        indices = np.array(sorted(table), int)
        values = np.stack([table[k] for k in indices])
        source = {"kind": "table", "file": str(tos_csv) if tos_csv else None}
    missing = [int(k) for k in indices if k not in set(frame.slices.tolist())]
    if missing:
        raise InputError(
            f"TOS slices {missing}: no LV myocardium there in the SAX labels (slices with myocardium, listed base "
            f"to apex: {frame.slices.tolist()}); slice numbers are 0-based indices in the stack's stored order, "
            "which may start at the apex (`cardiac-diffusion inspect` with the labels says which end is basal)"
        )
    qa.require_slices(len(indices), "TOS")
    order = np.argsort([float(np.flatnonzero(frame.slices == k)[0]) for k in indices])
    return indices[order], values[order], source


def _myocardium(stack: SliceStack, method: str, spacing: float, sadir_options: dict | None):
    """(myocardium label image with value 2, deformation info dict or None)."""
    if method == "shape":
        from ..reconstruction.volume import reconstruct

        labels = reconstruct(stack, "shape", spacing).labels
        myo = sitk.Cast(labels == MYO, sitk.sitkUInt8) * MYO
        return myo, None
    if method != "sadir":
        raise InputError(f"--method {method!r}: use one of {METHODS}")
    try:
        from ..sadir import reconstruct_myocardium
    except ImportError:
        raise InputError(
            "--method sadir: the SADIR reconstruction (sadir.reconstruct_myocardium) is not available in this "
            "installation; use --method shape"
        ) from None
    from ..reconstruction.volume import MIN_SPACING_MM

    if not np.isfinite(spacing) or not MIN_SPACING_MM <= spacing <= SADIR_MAX_SPACING_MM:
        raise InputError(f"--spacing {spacing}: give the myocardium's through-plane spacing in mm, from "
                         f"{MIN_SPACING_MM} to {SADIR_MAX_SPACING_MM:g} (default 1)")  # fmt: skip
    out = reconstruct_myocardium(stack, **(sadir_options or {}))
    myo, info = _sadir_output(out)
    probability = _first(out, ("probability",))
    if isinstance(probability, sitk.Image):  # finer than the model's cube: the soft myocardium on the stack's grid
        myo = on_stack_grid(probability, stack, spacing)
    return myo, {**info, "model": _sadir_model((sadir_options or {}).get("model"))}


SADIR_MAX_SPACING_MM = 5.0  # coarser than the model's 1.75 mm cube would only lose its detail


def on_stack_grid(probability: sitk.Image, stack: SliceStack, spacing: float, margin: int = 2) -> sitk.Image:
    """The myocardium (value 2) where ``probability`` (SADIR's deformed soft atlas on its 1.75 mm cube), resampled
    linearly, is >= 0.5, on a grid of the stack's axes and in-plane pixels with ``spacing`` mm through-plane over
    the myocardium's extent plus ``margin`` voxels. Thresholding the interpolated probability rather than resampling
    the cube's labels keeps the surface between the cube's voxels: on 6 held-out MR phantoms (seeds 5000-5005),
    Dice against the analytic myocardium at 0.875 mm 0.951-0.971, against 0.937-0.959 for the cube's labels
    resampled by nearest neighbour."""
    values = sitk.GetArrayViewFromImage(probability)
    found = np.argwhere(values >= 0.01)
    if not len(found):
        return sitk.Cast(probability >= 0.5, sitk.sitkUInt8) * MYO
    lo, hi = found.min(axis=0)[::-1] - 1, found.max(axis=0)[::-1] + 1  # (x, y, z) index box, one voxel wider
    corners = np.array(list(itertools.product(*zip(lo, hi))), float)  # the box's 8 corners
    cube_dir = np.array(probability.GetDirection()).reshape(3, 3)
    points = np.asarray(probability.GetOrigin()) + (corners * probability.GetSpacing()) @ cube_dir.T
    step = np.array([stack.pixel_spacing[0], stack.pixel_spacing[1], spacing], float)
    coords = (points - stack.origins[0]) @ stack.direction / step  # in the stack grid's voxels
    first = np.floor(coords.min(axis=0)).astype(int) - margin
    size = np.ceil(coords.max(axis=0)).astype(int) + margin - first + 1
    grid = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    grid.SetOrigin(tuple(float(v) for v in stack.origins[0] + stack.direction @ (first * step)))
    grid.SetSpacing(tuple(float(v) for v in step))
    grid.SetDirection(tuple(stack.direction.flatten().tolist()))
    fine = sitk.Resample(probability, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(fine >= 0.5, sitk.sitkUInt8) * MYO


def _sadir_model(model) -> dict:
    """lma.json's record of the SADIR model used: name, version, sha256 (models.store.model_provenance)."""
    from ..models.store import model_provenance
    from ..sadir.reconstruct import DEFAULT_MODEL

    return model_provenance(DEFAULT_MODEL if model is None or isinstance(model, str) and not model else model)


def _first(out, keys):
    for key in keys:
        value = out.get(key) if isinstance(out, dict) else getattr(out, key, None)
        if value is not None:
            return value
    return None


def _sadir_output(out) -> tuple[sitk.Image, dict]:
    """Myocardium (value 2) and deformation info from what ``reconstruct_myocardium`` returns.

    Accepted: a label image, or a dict/object with one under ``labels``/``myocardium`` and optionally
    ``displacement`` (B, 3, D, H, W voxels) or ``jacobian_min`` for the QA check.
    """
    image = out if isinstance(out, sitk.Image) else _first(out, ("labels", "myocardium"))
    if not isinstance(image, sitk.Image):
        raise InputError("--method sadir: the SADIR reconstruction returned no label image")
    info = {} if image is out else {
        "displacement": _first(out, ("displacement",)),
        "jacobian_min": _first(out, ("jacobian_min", "min_jacobian_determinant")),
        "slice_dice": _first(out, ("slice_dice",)),
        "topology": _first(out, ("topology",)),
        "flags": list(_first(out, ("flags",)) or []),
    }  # fmt: skip
    values = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        myo = image > 0.5  # a soft mask
    elif values.max() <= 1:
        myo = image > 0  # a binary mask
    else:
        myo = image == MYO  # project labels
    return sitk.Cast(myo, sitk.sitkUInt8) * MYO, info


def run_lma(
    stack: SliceStack, strain=None, tos_csv=None, tos: dict | None = None, frame_ms: float = 17.0,
    tos_method: str = "detector", strain_slices=None, rv_insertion=None, base=None, apex=None, scar=None,
    late_percentile: float | None = 75.0, late_threshold_ms: float | None = None, method: str = "shape",
    spacing: float = 1.0, include_apical: bool = False, smoothing_iterations: int = 20,
    sadir_options: dict | None = None, progress: Callable[[float, str], None] | None = None,
) -> LMAResult:  # fmt: skip
    """Run the LMA workflow on a labelled SAX ``stack`` (see the module docstring).

    ``strain``: ``(n, 18, frames)``, one matrix per slice holding myocardium, base to apex (or per
    ``strain_slices``, in their order); ``tos_csv``/``tos``: ``{slice: 18 values}``. Slice numbers are
    0-based indices in the stack's stored order (sorted along its normal; index 0 may be the apex); lma.json
    lists the TOS slices base to apex (``tos_slices``) with their heights (``frame.slice_heights``, 0 base,
    1 apex). ``scar``: AHA segments to exclude. ``progress(fraction, message)`` is told each stage.
    """
    say = progress or (lambda fraction, message: None)
    say(0.0, "LV frame and TOS")
    if stack.labels is None:
        raise InputError(f"{stack.source}: has no labels; give the SAX labels (--slice-labels)")
    qa.require_slices(stack.n, stack.source)
    scar = check_scar(scar)  # a wrong segment number: before the work, not after the 3D myocardium
    for option, point in (("--rv-insertion", rv_insertion), ("--base", base), ("--apex", apex)):
        if point is not None:
            check_in_view(stack, point, option)
    full = lv_frame(stack, rv_insertion, base, apex)
    qa.require_slices(len(full.slices), f"{stack.source}: slices holding LV myocardium")
    flags = [qa.flag("input", str(warning)) for warning in stack.meta.get("warnings", [])]  # e.g. geometry not stored
    indices, values, source = _tos_input(full, strain, tos_csv, tos, frame_ms, tos_method, strain_slices, flags)
    frame = full.subset(indices)
    flags += qa.alignment_flags(stack, full) + qa.anatomy_flags(stack, full) + qa.coverage_flags(full, frame)
    if rv_insertion is not None:
        flags += qa.insertion_flags(stack, full, rv_insertion)
    flags += qa.tos_flags(values)
    say(0.2, f"3D myocardium ({method})")
    myo, deformation = _myocardium(stack, method, spacing, sadir_options)
    say(0.8, "surface, TOS map and AHA segments")
    myo, specks = drop_specks(myo)
    if deformation:
        flags += qa.jacobian_flags(deformation.get("displacement"), deformation.get("jacobian_min"))
        flags += [qa.flag("sadir", str(message)) for message in deformation.get("flags", [])
                  if "jacobian" not in str(message).lower()]  # fmt: skip
    mesh = myocardium_mesh(myo, smoothing_iterations=smoothing_iterations)
    late = paint(mesh, frame, values, late_percentile, late_threshold_ms)
    angle, height = frame.aha_coords(mesh_points(mesh))  # each level from its own RV insertion
    segments = segment_of(angle, height)
    add_point_array(mesh, SEGMENT_ARRAY, segments.astype(np.uint8))
    tos_points = _array(mesh, TOS_ARRAY)
    late_points = _array(mesh, LATE_ARRAY).astype(bool)
    table = segment_table(segments, tos_points, late_points, late["threshold_ms"] if late_points.any() else None,
                          scar)  # fmt: skip
    lead = suggest_lead(table, include_apical)
    if lead["segment"] is None:
        flags.append(qa.flag("no_lead_segment", "no free-wall segment without scar has TOS values"))
    lma = {
        "workflow": WORKFLOW,
        "label": "decision support",
        "disclaimer": DISCLAIMER,
        "coordinates": "LPS mm (mesh points and all 3D points)",
        "reconstruction": {"method": method, "spacing_mm": spacing,
                           "grid": {"size": list(myo.GetSize()), "spacing_mm": [round(v, 4) for v in myo.GetSpacing()]},
                           "specks_removed_voxels": specks,
                           **_sadir_summary(deformation)},  # fmt: skip
        "tos_source": source,
        "tos_slices": [int(k) for k in indices],
        "tos_ms": [[round(float(v), 2) for v in row] for row in values],
        "frame": frame.summary(),
        "late_activation": late,
        "mesh": {"points": mesh.GetNumberOfPoints(), "cells": mesh.GetNumberOfCells(),
                 "point_arrays": [TOS_ARRAY, LATE_ARRAY, SEGMENT_ARRAY],
                 "stl_note": "STL holds the geometry only (no TOS_ms): use the VTP for the painted map"},  # fmt: skip
        "segments": table,
        "lead": lead,
        "qa": flags,
        "stack": stack.geometry_report(),
    }
    points, has_myo = sector_points(stack, frame)
    lma["sector_points"] = {
        "sectors_without_myocardium": {str(int(k)): (np.flatnonzero(~row) + 1).tolist()
                                       for k, row in zip(frame.slices, has_myo) if not row.all()},
        "note": "no myocardium pixel in these sectors of these slices (a gap in the contour): sector_points.vtp "
                "does not draw them (has_myocardium 0); their TOS is in sector_tos.csv and still enters the map, "
                "which interpolates by angle, not by these points",
    }  # fmt: skip
    return LMAResult(myo, mesh, frame, values, points, table, lead, lma, has_myo)


_RAS = "in LPS mm (Slicer shows RAS: negate x and y)"
#: what to give instead of a point outside the image, per option (the RV wording is matched by slicer_adapter/job.py)
IN_VIEW_HINTS = {
    "--rv-insertion": f"give the anterior RV insertion on a SAX slice {_RAS}",
    "--base": f"give the LV base (the mitral valve plane's centre) inside the image's field of view {_RAS}, or leave "
              "--base out to estimate it from the slices",
    "--apex": f"give the LV apex (the tip of the LV) inside the image's field of view {_RAS}, or leave --apex out to "
              "estimate it from the slices",
}  # fmt: skip


def check_in_view(stack: SliceStack, points, option: str) -> None:
    """InputError for a point (LPS mm) outside the stack's image: beside its field of view, or beyond its first or last
    slice by more than one slice gap (``--rv-insertion``: the sectors would start from a direction the image never
    showed) or by more than the stack's length (``--base``/``--apex``, which may lie beyond a stack that stops short).
    The refusal names ``option`` and what to give instead (:data:`IN_VIEW_HINTS`)."""
    points = np.asarray(points, float).reshape(-1, 3)
    if not np.all(np.isfinite(points)):
        raise InputError(f"{option}: points must be finite LPS coordinates x,y,z (mm)")
    rows, cols = stack.shape2d
    gap = float(np.median(np.abs(np.diff(stack.positions)))) if stack.n > 1 else 10.0
    reach = gap if option == "--rv-insertion" else max(gap, float(np.ptp(stack.positions)))
    for point in points:
        along = float(point @ stack.normal)
        k = int(np.argmin(np.abs(stack.positions - along)))
        d = point - stack.origins[k]
        col, row = d @ stack.row_dir / stack.pixel_spacing[0], d @ stack.col_dir / stack.pixel_spacing[1]
        beyond = max(stack.positions[0] - along, along - stack.positions[-1], 0.0)
        if not (-0.5 <= col <= cols - 0.5 and -0.5 <= row <= rows - 0.5) or beyond > reach:
            text = ",".join(f"{v:g}" for v in point)
            end = "first" if along < stack.positions[0] else "last"
            where = (f"{beyond:.0f} mm beyond the {end} slice" if beyond > reach else
                     f"at column {col:.0f}, row {row:.0f} of a {cols} x {rows} image")  # fmt: skip
            if beyond > reach and option != "--rv-insertion":
                where += f"; the stack is {reach:.0f} mm long"
            hint = IN_VIEW_HINTS.get(option, f"give {option} inside the SAX image {_RAS}")
            raise InputError(f"{option} {text}: lies outside the SAX image ({where}); {hint}")


def drop_specks(myo: sitk.Image, fraction: float = 0.01) -> tuple[sitk.Image, int]:
    """(myocardium without its detached specks, voxels removed): face-connected pieces under ``fraction`` of the
    myocardium (bits of a few labelled pixels beyond the base or apex) would float beside the surface."""
    components = sitk.ConnectedComponent(myo > 0, False)
    total = int(sitk.GetArrayViewFromImage(myo).astype(bool).sum())
    kept = sitk.RelabelComponent(components, max(1, int(np.ceil(fraction * total)))) > 0
    out = sitk.Cast(kept, sitk.sitkUInt8) * MYO
    out.CopyInformation(myo)
    return out, total - int(sitk.GetArrayViewFromImage(kept).sum())


def _sadir_summary(info: dict | None) -> dict:
    if not info:
        return {}
    out = {k: info.get(k) for k in ("jacobian_min", "slice_dice", "topology", "model") if info.get(k) is not None}
    return {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in out.items()}


def _array(mesh: vtkPolyData, name: str) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(mesh.GetPointData().GetArray(name)).astype(float)


#: lma.json's "workflow" (an --out holding an lma.json with it is an earlier run's: replaced)
WORKFLOW = "late mechanical activation (LMA)"
OUTPUTS = {
    "labels": "myocardium_labels.nii.gz", "vtp": "myocardium_tos.vtp", "stl": "myocardium.stl",
    "bullseye": "bullseye.png", "segments": "segments.csv", "sector_tos": "sector_tos.csv",
    "sector_points": "sector_points.vtp", "json": "lma.json",
}  # fmt: skip


def write_outputs(result: LMAResult, out_dir) -> dict[str, Path]:
    """Write every output of :data:`OUTPUTS` under ``out_dir``; returns their paths."""
    from ..io.volumes import write_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in OUTPUTS.items()}
    write_image(result.labels, paths["labels"])
    write_vtp(result.mesh, paths["vtp"])
    write_stl(result.mesh, paths["stl"])
    late = result.lma.get("late_activation", {})
    late_rule = (f"segment median TOS >= {late['threshold_ms']:.0f} ms ({late['rule']})"
                 if late.get("late_fraction_of_points") else None)  # fmt: skip
    write_bullseye_png(paths["bullseye"], result.segments, result.lead, late_rule=late_rule)
    write_segments_csv(paths["segments"], result.segments, result.lead)
    write_tos_csv(paths["sector_tos"], dict(zip(result.frame.slices.tolist(), result.tos)))
    write_vtp(sector_polydata(result.sector_points, result.tos, result.sector_has_myocardium), paths["sector_points"])
    lma = dict(result.lma, segments=json_segments(result.lma["segments"]), outputs={k: v for k, v in OUTPUTS.items()})
    write_json(paths["json"], lma)
    return paths


def json_segments(table: list[dict]) -> list[dict]:
    """The segment rows as lma.json keeps them: a segment no mesh point falls in has ``points`` 0 and its TOS
    and late fraction ``null`` (undefined; the in-memory table and segments.csv hold NaN)."""
    return [{k: number_or_none(v) if isinstance(v, float) else v for k, v in row.items()} for row in table]
