"""The Reconstruction module's logic without Qt: export inputs, run the CLI as a child, load outputs.

``ReconstructionJob(scene, sax_volume, ...)`` writes its inputs to a temporary folder, runs
``python -m CardiacDiffusionLib.cli.main reconstruct ...`` (``PythonSlicer`` in Slicer) and, once
the child succeeded, adds NEW nodes: the reconstructed volume, a segmentation with named, coloured
segments and 3D surfaces, and a table of LAX Dice. Nothing is added to the scene before that, so a
cancelled or failed job leaves the scene as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import SimpleITK as sitk

from ..errors import InputError
from . import mrml
from .process import ChildProcess, Message

METHODS = ("dmcvr", "shape", "linear", "nearest")
DEVICES = ("auto", "cpu", "cuda")
#: share of the progress bar taken by the child process (the rest: export before, loading after)
_CHILD_START, _CHILD_END = 0.05, 0.9

ProgressCallback = Callable[[Optional[float], str], None]


def python_executable() -> str:
    """``PythonSlicer`` when running in Slicer (``sys.executable`` is the application there)."""
    return shutil.which("PythonSlicer") or sys.executable


def child_environment() -> dict[str, str]:
    """The current environment with this package's parent folder first on ``PYTHONPATH``."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


@dataclass
class ReconstructionResult:
    volume: object  # vtkMRMLScalarVolumeNode
    segmentation: object | None  # vtkMRMLSegmentationNode
    table: object | None  # vtkMRMLTableNode of LAX Dice
    lax_dice: dict = field(default_factory=dict)
    log: list[str] = field(default_factory=list)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "node"


class ReconstructionJob:
    """One reconstruction of a SAX volume node; see the module docstring."""

    #: the command-line entry point run with ``python -m``
    cli_module = "CardiacDiffusionLib.cli.main"

    def __init__(
        self, scene, sax_volume, sax_labels=None, lax_label_nodes: Sequence = (), method: str = "shape",
        spacing: float = 1.0, steps: int | None = None, device: str = "auto", python: str | None = None,
        output_volume=None, output_segmentation=None, keep_files: bool = False,
    ):  # fmt: skip
        if sax_volume is None:
            raise InputError("SAX volume: none selected; choose the SAX stack to reconstruct")
        if method not in METHODS:
            raise InputError(f"method {method!r} is unknown; use one of {METHODS}")
        if device not in DEVICES:
            raise InputError(f"device {device!r} is unknown; use one of {DEVICES}")
        if not spacing > 0:
            raise InputError(f"target spacing must be positive, got {spacing} mm")
        self.scene = scene
        self.sax_volume = sax_volume
        self.sax_labels = sax_labels
        self.lax_label_nodes = [n for n in lax_label_nodes if n is not None]
        self.method, self.spacing, self.steps, self.device = method, float(spacing), steps, device
        self.python = python or python_executable()
        self.output_volume, self.output_segmentation = output_volume, output_segmentation
        self.keep_files = keep_files
        self.folder: Path | None = None
        self.child: ChildProcess | None = None
        self.result: ReconstructionResult | None = None
        self.log: list[str] = []
        self._lax_names: dict[str, str] = {}
        self._callback: ProgressCallback | None = None

    # ---- steps ----------------------------------------------------------------------------------
    def start(self, progress_callback: ProgressCallback | None = None) -> "ReconstructionJob":
        """Export the inputs and start the child process (returns at once)."""
        self._callback = progress_callback
        self.folder = Path(tempfile.mkdtemp(prefix="CardiacDiffusion-reconstruction-"))
        try:
            self._report(0.0, f"exporting inputs to {self.folder}")
            command = self._export()
            self._report(_CHILD_START, f"running {self.method} reconstruction")
            self.child = ChildProcess(command, env=child_environment(), name=f"{self.method} reconstruction")
        except BaseException:
            self._cleanup()
            raise
        return self

    def poll(self) -> bool:
        """Forward the child's messages; when it has finished load the outputs. True when done."""
        if self.result is not None:
            return True
        self.child.poll(self._on_message)
        if not self.child.finished:
            return False
        self.finish()
        return True

    def wait(self, timeout: float | None = None) -> ReconstructionResult | None:
        """Block until the job is done (the console/batch path); ``None`` on timeout."""
        if self.child.wait(timeout, self._on_message) is None:
            return None
        return self.finish()

    def cancel(self) -> None:
        """Kill the child and its children; the scene is left as it was."""
        if self.child is not None:
            self.child.cancel()
        self._cleanup()
        self._report(None, "cancelled")

    def finish(self) -> ReconstructionResult:
        """Load the child's outputs as new nodes (raises ``ProcessFailed`` if the child failed)."""
        if self.result is not None:
            return self.result
        try:
            self.child.poll(self._on_message)
            if self.child.cancelled:
                raise InputError("the reconstruction was cancelled")
            self.child.check()
            self._report(_CHILD_END, "loading results")
            self.result = self._load(self.folder / "out")
        finally:
            self._cleanup()
        self._report(1.0, "done")
        return self.result

    @property
    def running(self) -> bool:
        return self.child is not None and not self.child.finished

    # ---- inputs ---------------------------------------------------------------------------------
    def _export(self) -> list[str]:
        # NRRD keeps the geometry in full double precision (NIfTI's sform is float32)
        folder = self.folder
        sax_path = folder / "sax.nrrd"
        mrml.save_volume(self.sax_volume, sax_path)
        command = [self.python, "-m", self.cli_module, "reconstruct"]
        command += ["--method", self.method, "--sax", str(sax_path), "--spacing", repr(self.spacing)]
        command += ["--device", self.device, "--out", str(folder / "out")]
        if self.steps:
            command += ["--steps", str(int(self.steps))]
        if self.sax_labels is not None:
            path = folder / "sax_labels.nrrd"
            self._write_labels(self.sax_labels, path, reference=mrml.image_from_volume_node(self.sax_volume))
            command += ["--sax-labels", str(path)]
        if self.lax_label_nodes:
            paths = []
            for index, node in enumerate(self.lax_label_nodes):
                stem = f"{index}_{_file_stem(node.GetName())}"
                path = folder / f"{stem}.nrrd"
                self._write_labels(node, path, reference=None)
                self._lax_names[path.name] = node.GetName()
                paths.append(str(path))
            command += ["--lax-labels", *paths]
        return command

    def _write_labels(self, node, path: Path, reference: sitk.Image | None) -> None:
        if node.IsA("vtkMRMLSegmentationNode"):
            if reference is None:
                reference = reference_image_of_segmentation(node)
            sitk.WriteImage(mrml.labels_from_segmentation(node, reference), str(path), True)
        elif node.IsA("vtkMRMLVolumeNode"):
            mrml.save_volume(node, path)
        else:
            raise InputError(f"{node.GetName()}: give a labelmap volume or a segmentation, not a {node.GetClassName()}")

    # ---- outputs --------------------------------------------------------------------------------
    def _load(self, out: Path) -> ReconstructionResult:
        base = f"{self.sax_volume.GetName()} {self.method}"
        image = sitk.ReadImage(str(out / "reconstruction_image.nii.gz"))
        volume = mrml.volume_node_from_image(self.scene, image, base, node=self.output_volume)
        segmentation = None
        labels_path = out / "reconstruction_labels.nii.gz"
        if labels_path.exists():
            labels = sitk.ReadImage(str(labels_path))
            segmentation = mrml.segmentation_from_labels(
                self.scene, labels, f"{base} segmentation", reference_volume=volume, node=self.output_segmentation
            )
        table, lax_dice = None, {}
        dice_path = out / "lax_dice.json"
        if dice_path.exists():
            raw = json.loads(dice_path.read_text())
            lax_dice = {self._lax_names.get(k, k): v for k, v in raw.items()}
            table = mrml.table_from_dict(self.scene, lax_dice, f"{base} LAX Dice", row_header="LAX")
        return ReconstructionResult(volume, segmentation, table, lax_dice, list(self.log))

    # ---- helpers --------------------------------------------------------------------------------
    def _on_message(self, message: Message) -> None:
        if message.kind == "progress" and message.progress is not None:
            fraction = _CHILD_START + (_CHILD_END - _CHILD_START) * min(max(message.progress, 0.0), 1.0)
            self._report(fraction, message.text)
        elif message.text:
            self.log.append(message.text)
            self._report(None, message.text)

    def _report(self, fraction: float | None, text: str) -> None:
        if self._callback is not None:
            self._callback(fraction, text)

    def _cleanup(self) -> None:
        if self.folder is not None and not self.keep_files:
            shutil.rmtree(self.folder, ignore_errors=True)


def reference_image_of_segmentation(node) -> sitk.Image:
    """An empty image on a segmentation's reference geometry (e.g. the LAX plane it was drawn on)."""
    import slicer

    converter = slicer.vtkSegmentationConverter
    geometry = node.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName())
    if not geometry:
        raise InputError(
            f"{node.GetName()}: segmentation has no reference geometry; export it to a labelmap volume "
            "on its LAX image first"
        )
    oriented = slicer.vtkOrientedImageData()
    converter.DeserializeImageGeometry(geometry, oriented, False)
    import vtk

    matrix = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(matrix)
    extent = oriented.GetExtent()
    size = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    ras = mrml._numpy_matrix(matrix)
    ras[:, 3] = ras @ [extent[0], extent[2], extent[4], 1.0]
    origin, spacing, direction = mrml.geometry_from_ijk_to_ras(ras, node.GetName())
    image = sitk.Image(size, sitk.sitkUInt8)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image
