"""Helpers shared by several test files (pytest puts ``Testing/`` on ``sys.path``: ``from helpers import ...``)."""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from skimage.color import rgb2lab

#: a tiny DMCVR network configuration (seconds on a CPU)
DMCVR_TINY = {
    "z_dim": 16,
    "semantic_channels": [8, 8, 16, 16],
    "morph_features": [8, 8, 16, 16, 32, 8],
    "morph_channels": 4,
    "unet_channels": [16, 32, 32],
    "unet_attention_levels": [False, False, True],
    "num_head_channels": 16,
    "steps": 10,
}

#: Machado, Oliveira & Fernandes (2009) colour-vision-deficiency matrices (severity 1.0), on linear RGB
CVD = {
    "normal": np.eye(3),
    "protan": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]),
    "deutan": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]),
    "tritan": np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]),
}  # fmt: skip


def as_seen(rgb, vision: str) -> np.ndarray:
    """CIELAB of sRGB colours (n, 3) as a reader with ``vision`` (a key of :data:`CVD`) sees them."""
    c = np.asarray(rgb, float)
    linear = np.clip(np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) @ CVD[vision].T, 0.0, 1.0)
    return rgb2lab(np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)[None])[0]


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


def lma_phantom_files(folder: Path):
    """(folder, case): the activation phantom 0 (one slab per slice) with its labels as ``labels.nii.gz`` and its
    strain as ``strain.npy`` in ``folder`` (11 slices, 9 with myocardium)."""
    from CardiacDiffusionLib.activation.phantom_case import PhantomCase

    case = PhantomCase(0, 1)
    sitk.WriteImage(case.stack.to_image(labels=True), str(folder / "labels.nii.gz"))
    np.save(folder / "strain.npy", case.strain)
    return folder, case


def lbbb_stack_and_tos(folder: Path):
    """(labelled SAX stack of MR phantom 0: 11 slices, 96 x 96 pixels of 2 mm, 10 mm apart; ``folder/tos.csv``, an
    LBBB pattern on its LV frame)."""
    from CardiacDiffusionLib.activation.sectors import lv_frame
    from CardiacDiffusionLib.activation.tos import write_tos_csv
    from CardiacDiffusionLib.phantoms.activation import ActivationPhantom
    from CardiacDiffusionLib.phantoms.mr import MRPhantom
    from CardiacDiffusionLib.phantoms.scanner import acquire_sax

    stack = acquire_sax(MRPhantom(0), noise_sigma=0.0, sub_planes=1, matrix=96, pixel_mm=2.0)
    frame = lv_frame(stack)
    tos = np.maximum(ActivationPhantom(3, "lbbb").sector_tos(len(frame.slices), 18), 17.0)
    return stack, write_tos_csv(folder / "tos.csv", dict(zip(frame.slices.tolist(), tos)))


def error_line(argv: list[str], capsys) -> str:
    """The one ``error: ...`` line ``cardiac-diffusion argv`` prints on stderr, exit code 2 asserted."""
    from CardiacDiffusionLib.cli.main import main

    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def strict_json(text: str):
    """``text`` parsed as jq or JavaScript would: NaN / Infinity fail the test."""
    import json

    def refuse(name):
        raise AssertionError(f"{name} in the output: not strict JSON")

    return json.loads(text, parse_constant=refuse)
