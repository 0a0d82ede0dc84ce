"""Helpers shared by several test files (pytest puts ``Testing/`` on ``sys.path``: ``from helpers import ...``)."""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def oblique_image(array: np.ndarray, spacing=(1.367188, 1.25, 9.99997)) -> sitk.Image:
    """``array`` (z, y, x) on an oblique frame taken from a real SAX series: no axis along a world axis."""
    row = np.array([-0.104592, 0.346381, -0.932245])
    col = np.array([-0.733192, -0.660188, -0.163037])
    row /= np.linalg.norm(row)
    col -= row * (row @ col)
    col /= np.linalg.norm(col)
    image = sitk.GetImageFromArray(array)
    image.SetDirection(np.stack([row, col, np.cross(row, col)], axis=1).flatten().tolist())
    image.SetOrigin((162.673, 35.6185, 144.459))
    image.SetSpacing(spacing)
    return image


def load_panel(name: str, monkeypatch, scene):
    """Import ``CardiacDiffusion/<name>/<name>.py`` on slicer-core with stand-ins for its Qt side.

    Only qt, i18n, parameterNodeWrapper and the ScriptedLoadableModule bases are stubbed; MRML, the Lib
    and the module's own Logic and Test code are the real ones.
    """
    import slicer

    def module(module_name, **names):
        stub = types.ModuleType(module_name)
        stub.__dict__.update(names)
        monkeypatch.setitem(sys.modules, module_name, stub)

    class Base:
        def __init__(self, parent=None):
            self.parent = parent

    class SelfTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    module("qt", QTimer=object)
    module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    module("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls, Choice=lambda *a: None,
           WithinRange=lambda *a: None)  # fmt: skip
    module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=Base, ScriptedLoadableModuleWidget=Base,
           ScriptedLoadableModuleLogic=Base, ScriptedLoadableModuleTest=SelfTest)  # fmt: skip
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    path = Path(__file__).resolve().parents[1] / "CardiacDiffusion" / name / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded
