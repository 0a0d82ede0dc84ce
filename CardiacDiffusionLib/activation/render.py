"""Offscreen picture of the painted myocardium: the mesh coloured by ``TOS_ms`` with a colour bar.

Plain VTK offscreen rendering (EGL or OSMesa where there is no display), so the LMA output can be
looked at without Slicer or ParaView. The camera looks from ``view_from`` with the base up; the colours are
the bullseye's (:data:`.bullseye.TOS_CMAP`), and the picture says which patient directions its edges face.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text of the caption and the colour bar)
import vtkmodules.vtkRenderingOpenGL2 as opengl  # the OpenGL render window, mapper and actors
from vtkmodules.vtkCommonCore import vtkLookupTable
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkIOImage import vtkPNGWriter
from vtkmodules.vtkRenderingAnnotation import vtkScalarBarActor
from vtkmodules.vtkRenderingCore import (
    vtkActor, vtkPolyDataMapper, vtkRenderer, vtkRenderWindow, vtkTextActor, vtkWindowToImageFilter,
)  # fmt: skip

from ..errors import InputError
from .bullseye import TOS_CMAP
from .mapping import TOS_ARRAY

#: LPS axes and the patient directions their + and - ends point to
_LPS_WORDS = (("left", "right"), ("posterior", "anterior"), ("superior", "inferior"))
CAPTION = "decision support, not a diagnosis"


def direction_words(vector, share: float = 0.4) -> str:
    """Patient direction of an LPS ``vector`` in words, strongest first: ``"anterior-left"`` (components whose
    size is at least ``share`` of the largest one)."""
    v = np.asarray(vector, float)
    size = np.abs(v)
    order = [i for i in np.argsort(-size) if size[i] >= share * size.max()]
    return "-".join(_LPS_WORDS[i][0 if v[i] > 0 else 1] for i in order)


def screen_axes(base_to_apex, view_from) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit LPS vectors of the picture's right, up and the side the camera looks from (base up)."""
    down = np.asarray(base_to_apex if base_to_apex is not None else (0, 0, 1), float)
    side = np.asarray(view_from if view_from is not None else (1, 0, 0), float)
    down = down / np.linalg.norm(down)
    side = side - (side @ down) * down
    side = side / np.linalg.norm(side)
    up = -down
    return np.cross(-side, up), up, side


def tos_lookup_table(low: float, high: float, cmap: str = TOS_CMAP, n: int = 256) -> vtkLookupTable:
    """A VTK lookup table of the matplotlib colour map ``cmap`` over ``low``-``high`` ms."""
    from matplotlib import colormaps

    colours = colormaps[cmap](np.linspace(0.0, 1.0, n))
    lut = vtkLookupTable()
    lut.SetNumberOfTableValues(n)
    for i, rgba in enumerate(colours):
        lut.SetTableValue(i, *rgba)
    lut.SetTableRange(low, high)
    return lut


def _offscreen_window() -> vtkRenderWindow:
    """VTK's default window, except on Linux without a display (and no VTK_DEFAULT_OPENGL_WINDOW choice):
    there VTK (9.4+) first tries X, logs "bad X server connection" and then falls back to EGL; go to EGL
    directly when it can make a context."""
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless and not os.environ.get("VTK_DEFAULT_OPENGL_WINDOW") and hasattr(opengl, "vtkEGLRenderWindow"):
        window = opengl.vtkEGLRenderWindow()
        if window.SupportsOpenGL():
            return window
    return vtkRenderWindow()


def render_tos_png(mesh: vtkPolyData, path, base_to_apex=None, view_from=None, size=(640, 560),
                   array: str = TOS_ARRAY) -> Path:  # fmt: skip
    """Write a PNG of ``mesh`` coloured by the point array ``array`` (:data:`TOS_CMAP`: dark early, light late).

    ``base_to_apex`` (LPS) sets the camera's down direction, ``view_from`` (LPS) the side it looks from; the
    picture names both in patient directions, with the right edge's, and says it is decision support.
    """
    values = mesh.GetPointData().GetArray(array)
    if values is None:
        raise InputError(f"mesh: no point array {array!r} to colour by")
    low, high = values.GetRange()
    lut = tos_lookup_table(low, high)
    mapper = vtkPolyDataMapper()
    mapper.SetInputData(mesh)
    mapper.SetScalarModeToUsePointFieldData()
    mapper.SelectColorArray(array)
    mapper.SetLookupTable(lut)
    mapper.SetScalarRange(low, high)
    mapper.ScalarVisibilityOn()
    actor = vtkActor()
    actor.SetMapper(mapper)
    bar = vtkScalarBarActor()
    bar.SetLookupTable(lut)
    bar.SetTitle(f"{array.replace('_ms', '')} (ms)" if array.endswith("_ms") else array)
    bar.SetNumberOfLabels(5)
    bar.SetLabelFormat("%.0f")  # "136", not "136."
    bar.SetPosition(0.82, 0.12)
    bar.SetWidth(0.16)
    bar.SetHeight(0.72)
    bar.SetBarRatio(0.3)
    bar.UnconstrainedFontSizeOn()  # fixed point sizes: VTK's fitted ones grew over the title and the edge
    for prop, points in ((bar.GetTitleTextProperty(), 15), (bar.GetLabelTextProperty(), 14)):
        prop.SetColor(0, 0, 0)
        prop.SetFontSize(points)
        prop.ItalicOff()
        prop.ShadowOff()
        prop.BoldOff()
    right, up, side = screen_axes(base_to_apex, view_from)
    texts = [  # (text, pixels from the bottom, font size, bold)
        (f"seen from the patient's {direction_words(side)}, base up", size[1] - 22, 14, False),
        (f"right edge: patient's {direction_words(right)}", size[1] - 44, 14, False),
        (CAPTION, 8, 13, True),
    ]
    renderer = vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    renderer.AddActor(actor)
    renderer.AddViewProp(bar)
    for text, y, points, bold in texts:
        label = vtkTextActor()
        label.SetInput(text)
        label.GetTextProperty().SetColor(0.1, 0.1, 0.1)
        label.GetTextProperty().SetFontSize(points)
        label.GetTextProperty().SetBold(bold)
        label.SetDisplayPosition(8, y)
        renderer.AddViewProp(label)
    window = _offscreen_window()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    centre = np.array(mesh.GetCenter())
    camera.SetFocalPoint(*centre)
    camera.SetPosition(*(centre + 400.0 * side))
    camera.SetViewUp(*up)
    renderer.ResetCamera()
    window.Render()
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    writer = vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    window.Finalize()
    return Path(path)
