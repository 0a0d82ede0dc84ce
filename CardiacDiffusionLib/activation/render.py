"""Offscreen picture of the painted myocardium: the mesh coloured by ``TOS_ms`` with a colour bar.

Plain VTK offscreen rendering (EGL or OSMesa where there is no display), so the LMA output can be
looked at without Slicer or ParaView. The camera looks at the lateral wall (from the LV's
left, i.e. from the RV insertion's opposite side) with the base up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import vtk

from ..errors import InputError
from .mapping import TOS_ARRAY


def _offscreen_window() -> vtk.vtkRenderWindow:
    """VTK's default window, except on Linux without a display (and no VTK_DEFAULT_OPENGL_WINDOW choice):
    there VTK (9.4+) first tries X, logs "bad X server connection" and then falls back to EGL; go to EGL
    directly when it can make a context."""
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless and not os.environ.get("VTK_DEFAULT_OPENGL_WINDOW") and hasattr(vtk, "vtkEGLRenderWindow"):
        window = vtk.vtkEGLRenderWindow()
        if window.SupportsOpenGL():
            return window
    return vtk.vtkRenderWindow()


def render_tos_png(mesh: vtk.vtkPolyData, path, base_to_apex=None, view_from=None, size=(640, 560),
                   array: str = TOS_ARRAY) -> Path:  # fmt: skip
    """Write a PNG of ``mesh`` coloured by the point array ``array`` (blue early -> red late).

    ``base_to_apex`` (LPS) sets the camera's down direction, ``view_from`` (LPS) the side it looks from.
    """
    values = mesh.GetPointData().GetArray(array)
    if values is None:
        raise InputError(f"mesh: no point array {array!r} to colour by")
    low, high = values.GetRange()
    lut = vtk.vtkLookupTable()
    lut.SetHueRange(0.667, 0.0)  # blue (early) -> red (late)
    lut.SetTableRange(low, high)
    lut.Build()
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(mesh)
    mapper.SetScalarModeToUsePointFieldData()
    mapper.SelectColorArray(array)
    mapper.SetLookupTable(lut)
    mapper.SetScalarRange(low, high)
    mapper.ScalarVisibilityOn()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    bar = vtk.vtkScalarBarActor()
    bar.SetLookupTable(lut)
    bar.SetTitle("TOS (ms)")
    bar.SetNumberOfLabels(5)
    bar.SetWidth(0.12)

    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    renderer.AddActor(actor)
    renderer.AddViewProp(bar)
    bar.GetTitleTextProperty().SetColor(0, 0, 0)
    bar.GetLabelTextProperty().SetColor(0, 0, 0)
    window = _offscreen_window()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    centre = np.array(mesh.GetCenter())
    down = np.asarray(base_to_apex if base_to_apex is not None else (0, 0, 1), float)
    side = np.asarray(view_from if view_from is not None else (1, 0, 0), float)
    side = side - (side @ down) / (down @ down) * down
    camera.SetFocalPoint(*centre)
    camera.SetPosition(*(centre + 400.0 * side / np.linalg.norm(side)))
    camera.SetViewUp(*(-down / np.linalg.norm(down)))
    renderer.ResetCamera()
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    window.Finalize()
    return Path(path)
