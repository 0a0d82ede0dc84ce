"""Sector TOS placed in 3D and painted on the myocardium surface (VTK, LPS mm), late region marked.

Interpolation is in cardiac coordinates (see :mod:`.sectors`), not in the image grid: within a slice
linearly and periodically in angle between its sector centres (each slice's sectors start at its
own RV insertion), between slices linearly along the long axis, held constant beyond the first and
last slice. TOS values are interpolated, never colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import VTK_UNSIGNED_CHAR, vtkPoints, vtkStringArray
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkFieldData, vtkImageData, vtkPolyData
from vtkmodules.vtkFiltersCore import vtkPolyDataNormals, vtkWindowedSincPolyDataFilter
from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D
from vtkmodules.vtkIOGeometry import vtkSTLWriter
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLPolyDataWriter

from ..errors import InputError
from ..geometry.stack import SliceStack
from .sectors import MYO, LVFrame, pixel_points
from .tos import N_SECTORS, TOS_RANGE_MS

TOS_ARRAY = "TOS_ms"
LATE_ARRAY = "late_activation"
SEGMENT_ARRAY = "aha_segment"
MYOCARDIUM_ARRAY = "has_myocardium"
SECTOR_WIDTH = 2 * np.pi / N_SECTORS


def sector_centres(frame: LVFrame) -> np.ndarray:
    """Global angle (rad) of every sector centre, ``(n_slices, 18)``."""
    return frame.insertion_angles[:, None] + (np.arange(N_SECTORS) + 0.5) * SECTOR_WIDTH


def sector_points(stack: SliceStack, frame: LVFrame) -> tuple[np.ndarray, np.ndarray]:
    """(mid-wall LPS point of every sector ``(n_slices, 18, 3)``, has myocardium ``(n_slices, 18)`` bool).

    The point lies at the sector's centre angle and the mean radius of its myocardium pixels; where that falls
    outside them (a sector the contour covers in part), at its pixel nearest to it. A sector
    without myocardium pixels (a gap in the contour) keeps a point at the slice's median radius, marked False:
    not a position anything was measured at (:func:`sector_polydata` does not draw it).
    """
    out = np.zeros((len(frame.slices), N_SECTORS, 3))
    has = np.zeros((len(frame.slices), N_SECTORS), bool)
    centres = sector_centres(frame)
    for i, k in enumerate(frame.slices):
        points = pixel_points(stack, k, np.argwhere(stack.labels[k] == MYO))
        d = points - frame.centres[i]
        angle = np.mod(np.arctan2(d @ frame.e1, d @ frame.e0) - frame.insertion_angles[i], 2 * np.pi)
        sector = np.minimum((angle / SECTOR_WIDTH).astype(int), N_SECTORS - 1)
        radius = np.linalg.norm(d, axis=1)
        count = np.bincount(sector, minlength=N_SECTORS)
        has[i] = count > 0
        mean_r = np.where(has[i], np.bincount(sector, radius, N_SECTORS) / np.maximum(count, 1), np.median(radius))
        a = centres[i]
        out[i] = frame.centres[i] + mean_r[:, None] * (np.cos(a)[:, None] * frame.e0 + np.sin(a)[:, None] * frame.e1)
        for j in np.flatnonzero(has[i]):
            mine = points[sector == j]
            gap = np.linalg.norm(mine - out[i, j], axis=1)
            if gap.min() > 0.75 * max(stack.pixel_spacing):  # beyond its pixel (half a diagonal is 0.71)
                out[i, j] = mine[np.argmin(gap)]
    return out, has


def interpolate_tos(frame: LVFrame, tos: np.ndarray, points: np.ndarray) -> np.ndarray:
    """TOS (ms) at LPS ``points`` (m, 3) from per-slice sector TOS ``(n_slices, 18)`` (slices of ``frame``)."""
    tos = np.asarray(tos, float)
    if tos.shape != (len(frame.slices), N_SECTORS):
        raise InputError(f"TOS: shaped {tos.shape}, expected ({len(frame.slices)}, {N_SECTORS}) for this stack")
    angle, _ = frame.coords(points)
    per_slice = np.empty((len(frame.slices), len(angle)))
    for i, centres in enumerate(sector_centres(frame)):
        a = np.mod(centres, 2 * np.pi)
        order = np.argsort(a)
        a, v = a[order], tos[i][order]
        # periodic: one wrapped sector on each side
        a = np.concatenate([a[-1:] - 2 * np.pi, a, a[:1] + 2 * np.pi])
        v = np.concatenate([v[-1:], v, v[:1]])
        per_slice[i] = np.interp(angle, a, v)
    position = np.asarray(points, float) @ frame.axis
    if len(frame.positions) == 1:
        return per_slice[0]
    upper = np.clip(np.searchsorted(frame.positions, position), 1, len(frame.positions) - 1)
    lower = upper - 1
    w = np.clip((position - frame.positions[lower]) / (frame.positions[upper] - frame.positions[lower]), 0, 1)
    idx = np.arange(len(angle))
    return (1 - w) * per_slice[lower, idx] + w * per_slice[upper, idx]


def myocardium_mesh(labels: sitk.Image, value: int = MYO, smoothing_iterations: int = 20,
                    pass_band: float = 0.05) -> vtkPolyData:  # fmt: skip
    """Closed triangle surface (LPS mm) of ``labels == value``: discrete flying edges + windowed-sinc smoothing.

    Runs in index space on a zero-padded copy, then maps points through the image's origin, spacing
    and direction (VTK filters ignore an image's direction matrix).
    """
    mask = (sitk.GetArrayFromImage(labels) == value).astype(np.uint8)
    if mask.sum() == 0:
        raise InputError(f"myocardium mesh: no voxel has label {value}; the reconstruction is empty")
    padded = np.pad(mask, 1)
    image = vtkImageData()
    image.SetDimensions(padded.shape[2], padded.shape[1], padded.shape[0])
    image.GetPointData().SetScalars(numpy_to_vtk(padded.ravel(), deep=True, array_type=VTK_UNSIGNED_CHAR))
    surface = vtkDiscreteFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, 1)
    surface.ComputeNormalsOff()
    surface.ComputeGradientsOff()
    surface.ComputeScalarsOff()
    surface.Update()
    mesh = surface.GetOutput()
    ijk = vtk_to_numpy(mesh.GetPoints().GetData()).astype(float) - 1.0
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    lps = (ijk * np.array(labels.GetSpacing())) @ direction.T + np.array(labels.GetOrigin())
    mesh.GetPoints().SetData(numpy_to_vtk(lps, deep=True))
    if smoothing_iterations > 0:
        smooth = vtkWindowedSincPolyDataFilter()
        smooth.SetInputData(mesh)
        smooth.SetNumberOfIterations(smoothing_iterations)
        smooth.SetPassBand(pass_band)
        smooth.BoundarySmoothingOff()
        smooth.NonManifoldSmoothingOn()
        smooth.NormalizeCoordinatesOn()
        smooth.Update()
        mesh = smooth.GetOutput()
    normals = vtkPolyDataNormals()
    normals.SetInputData(mesh)
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()
    normals.Update()
    out = vtkPolyData()
    out.DeepCopy(normals.GetOutput())
    return out


def mesh_points(mesh: vtkPolyData) -> np.ndarray:
    return vtk_to_numpy(mesh.GetPoints().GetData()).astype(float)


def add_point_array(mesh: vtkPolyData, name: str, values: np.ndarray, active: bool = False) -> None:
    array = numpy_to_vtk(np.ascontiguousarray(values), deep=True)
    array.SetName(name)
    mesh.GetPointData().AddArray(array)
    if active:
        mesh.GetPointData().SetActiveScalars(name)


def late_threshold(tos: np.ndarray, percentile: float | None = 75.0, threshold_ms: float | None = None) -> float:
    """The TOS (ms) at and above which a point is late: ``threshold_ms`` when given, else the ``percentile`` of
    ``tos`` (1 µs above it where it is the earliest TOS of the map, so that a uniform map has no late region)."""
    if threshold_ms is not None:
        low, high = TOS_RANGE_MS
        if not low < threshold_ms <= high:  # NaN too: outside the range it marks all or none late
            raise InputError(f"late-activation threshold (--late-threshold) {threshold_ms:g} ms: give a TOS above "
                             f"{low:g} and at most {high:g} ms (the physiological range), e.g. 110")  # fmt: skip
        return float(threshold_ms)
    if percentile is None or not 0 < percentile < 100:
        raise InputError(f"late-activation percentile must be in (0, 100), got {percentile}")
    cut = float(np.percentile(tos, percentile))
    return cut + 1e-3 if cut - float(np.min(tos)) < 1e-3 else cut


def late_mask(
    tos: np.ndarray, percentile: float | None = 75.0, threshold_ms: float | None = None
) -> tuple[np.ndarray, float]:
    """(late: TOS >= :func:`late_threshold`, the given threshold or the ``percentile`` of ``tos``)."""
    applied = late_threshold(tos, percentile, threshold_ms)
    cut = applied if threshold_ms is not None else float(np.percentile(tos, percentile))
    return np.asarray(tos, float) >= applied, cut


def paint(mesh: vtkPolyData, frame: LVFrame, tos: np.ndarray, percentile: float | None = 75.0,
          threshold_ms: float | None = None) -> dict:  # fmt: skip
    """Add ``TOS_ms`` (float32, active scalars) and ``late_activation`` (uint8 0/1) point arrays; the returned
    ``threshold_ms`` is the exact one applied: ``late_activation == (TOS_ms >= threshold_ms)`` at every point."""
    values = interpolate_tos(frame, tos, mesh_points(mesh)).astype(np.float32)  # the values the mesh keeps
    cut = late_threshold(values, percentile, threshold_ms)
    late = values.astype(float) >= cut
    add_point_array(mesh, TOS_ARRAY, values, active=True)
    add_point_array(mesh, LATE_ARRAY, late.astype(np.uint8))
    rule = f"TOS >= {threshold_ms:g} ms" if threshold_ms is not None else f"TOS >= {percentile:g}th percentile"
    if threshold_ms is None and not late.any():
        rule += f" (none: the {percentile:g}th percentile is the map's earliest TOS)"
    return {"rule": rule, "threshold_ms": cut, "late_fraction_of_points": round(float(late.mean()), 4)}


def sector_polydata(points: np.ndarray, tos: np.ndarray, has_myocardium: np.ndarray | None = None) -> vtkPolyData:
    """The sector mid-wall points with ``TOS_ms`` (what was measured, before interpolation) and ``has_myocardium``
    (0/1); a vertex (what is drawn) only where the sector has myocardium, so no dot sits where there is none."""
    pts = vtkPoints()
    pts.SetData(numpy_to_vtk(points.reshape(-1, 3).astype(float), deep=True))
    poly = vtkPolyData()
    poly.SetPoints(pts)
    has = np.ones(pts.GetNumberOfPoints(), bool) if has_myocardium is None else np.asarray(has_myocardium).ravel()
    verts = vtkCellArray()
    for i in np.flatnonzero(has):
        verts.InsertNextCell(1)
        verts.InsertCellPoint(int(i))
    poly.SetVerts(verts)
    add_point_array(poly, TOS_ARRAY, np.asarray(tos, np.float32).ravel(), active=True)
    add_point_array(poly, MYOCARDIUM_ARRAY, has.astype(np.uint8))
    return poly


def write_vtp(mesh: vtkPolyData, path) -> Path:
    """VTK XML PolyData (binary, zlib) with all point arrays, LPS mm, tagged as Slicer tags it.

    The field-data string array ``SPACE = LPS`` is what Slicer's model reader looks for; ParaView
    ignores it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tagged = vtkPolyData()
    tagged.ShallowCopy(mesh)
    tagged.SetFieldData(vtkFieldData())
    space = vtkStringArray()
    space.SetName("SPACE")
    space.InsertNextValue("LPS")
    tagged.GetFieldData().AddArray(space)
    writer = vtkXMLPolyDataWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(tagged)
    writer.SetDataModeToBinary()
    writer.SetCompressorTypeToZLib()
    if not writer.Write():
        raise InputError(f"cannot write {path}")
    return path


def write_stl(mesh: vtkPolyData, path) -> Path:
    """Binary STL of the geometry only: STL has no per-point values, so TOS_ms is not in it (use the VTP)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = vtkSTLWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(mesh)
    writer.SetHeader("CardiacDiffusion LMA myocardium. SPACE=LPS")  # Slicer reads SPACE= from the header
    writer.SetFileTypeToBinary()
    if not writer.Write():
        raise InputError(f"cannot write {path}")
    return path


def read_vtp(path) -> vtkPolyData:
    reader = vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()
