"""A module job without Qt: export input nodes to files, run one CLI sub-command as a child, load outputs.

Subclasses give the sub-command (``command``), write their inputs in :meth:`CLIJob._export` (returning
the CLI arguments) and turn the output folder into NEW nodes in :meth:`CLIJob._load`. An input that is the
proxy node of a sequence browser (a cine) is read at the frame the browser shows; the job logs which
(``frames``) and the subclass records it on its outputs (``sequences.record_source``). Nothing is
added to the scene before the child succeeded, so a cancelled or failed job leaves the scene as it
was; the temporary folder is removed in every case (unless ``keep_files``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import SimpleITK as sitk

from ..errors import InputError
from ..labels import convert_labels
from . import mrml, sequences
from .process import ChildProcess, Message, ProcessFailed

ProgressCallback = Callable[[Optional[float], str], None]
#: share of the progress bar taken by the child process (the rest: export before, loading after)
CHILD_START, CHILD_END = 0.05, 0.9
#: label numberings a module offers for labelmap volumes (segmentations are matched by segment name)
LABEL_NUMBERINGS = ("project", "acdc")
#: the child's advice in command-line terms -> what a module's user does instead (phrases, before the options)
MODULE_HINTS = {
    "pass --label-convention acdc": "set the module's Label numbering to ACDC (1 RV, 2 MYO, 3 LV)",
    "with --rv-insertion x,y,z": "as a point list in the module's RV insertion field",
    "or leave --rv-insertion out to use the RV label's": "or empty the module's RV insertion field to use the RV label's",
    "install a CUDA build of torch": "install a CUDA build of PyTorch",
    "fewer --steps/smaller": "fewer DDIM steps/smaller",
    "choose another --out": "free disk space there (or start Slicer with TMPDIR on a larger disk)",
    "or pass model=PATH.safetensors": "or choose a .safetensors file as the DMCVR model",
    "name the slices with strain_slices / --strain-slices": "name the slices in the Strain slices field",
    "(frame_ms ": "(Strain frame interval ",
    "; `models list` shows them": "; `cardiac-diffusion models list` in a terminal shows them",
    "dmcvr steps:": "DDIM steps:",
    "dmcvr shape_prior:": "Shape prior:",
    "dmcvr guard:": "roughness_guard:",  # no panel field: ReconstructionLogic.run's keyword
    "--roughness-guard ": "roughness_guard ",
    "; give the anterior RV insertion on a SAX slice in LPS mm (Slicer shows RAS: negate x and y)":
        "; place the anterior RV insertion on a slice of the SAX image",
    " inside the image's field of view in LPS mm (Slicer shows RAS: negate x and y), or leave --base out":
        " on the SAX image, or leave the LV base point empty",
    " inside the image's field of view in LPS mm (Slicer shows RAS: negate x and y), or leave --apex out":
        " on the SAX image, or leave the LV apex point empty",
}
#: output nodes a job may be given to fill (its ``output_<kind>`` attribute) -> the class they must be
OUTPUT_CLASSES = {"volume": "vtkMRMLScalarVolumeNode", "segmentation": "vtkMRMLSegmentationNode"}
#: a command to type in a terminal (``cardiac-diffusion models add ...``): quoted as it is, never translated
TERMINAL_COMMAND = re.compile(r"cardiac-diffusion [^;()']*")


def checked_numbering(numbering: str) -> str:
    """``numbering`` if a module offers it (``LABEL_NUMBERINGS``), else an InputError."""
    if numbering not in LABEL_NUMBERINGS:
        raise InputError(f"label numbering {numbering!r} is unknown; use one of {LABEL_NUMBERINGS}")
    return numbering


def python_executable() -> str:
    """``PythonSlicer`` when running in Slicer (``sys.executable`` is the application there)."""
    return shutil.which("PythonSlicer") or sys.executable


def child_environment() -> dict[str, str]:
    """The current environment with this package's parent folder first on ``PYTHONPATH``."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


class CLIJob:
    """Base of the module jobs; see the module docstring. ``start`` -> ``poll``/``wait`` -> result."""

    #: the command-line entry point run with ``python -m``
    cli_module = "CardiacDiffusionLib.cli.main"
    #: the sub-command and a short name for messages; set by subclasses
    command = ""
    title = "job"
    #: the command's options -> the panel field's label (as in the module's .ui); set by subclasses
    options: dict[str, str] = {}
    #: the job's temporary output folder, as the child's messages may name it (``--out``)
    OUT_FOLDER = "the module's temporary output folder"

    def __init__(self, scene, python: str | None = None, keep_files: bool = False):
        self.scene = scene
        self.python = python or python_executable()
        self.keep_files = keep_files
        self.folder: Path | None = None
        self.child: ChildProcess | None = None
        self.result = None
        self.log: list[str] = []
        self.exported: dict[Path, str] = {}  # input file written for the child -> the node it came from
        self.input_ids: set[str] = set()  # IDs of the exported input nodes
        self.frames: dict[str, sequences.Frame] = {}  # exported proxy node's ID -> the cine frame it showed
        self._callback: ProgressCallback | None = None
        self._cancelled = False

    # ---- for subclasses -------------------------------------------------------------------------
    def _export(self, folder: Path) -> list[str]:
        """Write the inputs under ``folder``; the CLI arguments after the sub-command (no ``--out``)."""
        raise NotImplementedError

    def _load(self, out: Path):
        """New nodes from the child's output folder ``out``; the job's result."""
        raise NotImplementedError

    # ---- steps ----------------------------------------------------------------------------------
    def start(self, progress_callback: ProgressCallback | None = None) -> "CLIJob":
        """Export the inputs and start the child process (returns at once)."""
        self._callback = progress_callback
        self.folder = Path(tempfile.mkdtemp(prefix=f"CardiacDiffusion-{self.command}-"))
        try:
            self._report(0.0, "exporting inputs")  # to a temporary folder the panel's user never deals with
            arguments = self._export(self.folder)
            self._check_outputs()
            command = [self.python, "-m", self.cli_module, self.command, *arguments, "--out", str(self.folder / "out")]
            self._report(CHILD_START, f"running {self.title}")
            self.child = ChildProcess(command, env=child_environment(), name=self.title)
        except BaseException:
            self._cleanup()
            raise
        return self

    def poll(self) -> bool:
        """Forward the child's messages; when it has finished load the outputs. True when done."""
        if self.result is not None:
            return True
        self.child.poll(self._forward)
        if not self.child.finished:
            return False
        self.finish()
        return True

    def wait(self, timeout: float | None = None):
        """Block until the job is done (the console/batch path); ``None`` on timeout."""
        if self.child.wait(timeout, self._forward) is None:
            return None
        return self.finish()

    def cancel(self) -> None:
        """Kill the child and its children; the scene is left as it was. The child's lines queued until now are
        said before "cancelled"; what it says while dying is dropped (no work line after "cancelled")."""
        if self.child is not None:
            self.child.poll(self._forward)
            self.child.cancel()
        self._cancelled = True  # also when the child had already exited: its outputs are gone with the folder
        self._cleanup()
        self._report(None, "cancelled")

    def finish(self):
        """Load the child's outputs as new nodes (raises ``ProcessFailed`` if the child failed)."""
        if self.result is not None:
            return self.result
        try:
            self.child.poll(self._forward)
            if self.child.cancelled or self._cancelled:
                raise InputError(f"the {self.title} was cancelled")
            try:
                self.child.check()
            except ProcessFailed as error:  # the child names its input files: say which nodes they are
                said = self._in_module_terms
                raise ProcessFailed(said(str(error)), error.returncode, said(error.detail)) from None
            self._report(CHILD_END, "loading results")
            before = _node_ids(self.scene)
            try:
                self.result = self._load(self.folder / "out")
            except BaseException:  # a half-loaded result is taken out again: the scene stays as it was
                for node in reversed([n for n in _nodes(self.scene) if n.GetID() not in before]):
                    self.scene.RemoveNode(node)
                raise
        finally:
            self._cleanup()
        self._report(1.0, "done")
        return self.result

    @property
    def running(self) -> bool:
        return self.child is not None and not self.child.finished

    # ---- helpers --------------------------------------------------------------------------------
    def _exported(self, path: Path, node) -> Path:
        """Record that ``path`` holds ``node`` (for messages) and, for a proxy node, its frame; returns ``path``."""
        self.exported[Path(path)] = node.GetName()
        self.input_ids.add(node.GetID())
        frame = sequences.proxy_frame(node)
        if frame is not None and not frame.exact:  # e.g. labels of ED and ES only, the browser on another frame
            raise InputError(
                f"node '{node.GetName()}': its sequence '{frame.sequence}' has no item at {frame.index_text}, the "
                f"frame sequence browser '{frame.browser}' shows (it shows item {frame.item + 1} of {frame.count} "
                "instead); select a frame that has one, or leave this input empty"
            )
        if frame is not None:
            self.frames[node.GetID()] = frame
            said = f"node '{node.GetName()}': read at {frame.describe()}, the frame sequence browser '{frame.browser}' shows"
            self.log.append(said)
            self._report(None, said)
        return Path(path)

    def _check_outputs(self) -> None:
        """Before the child starts: each node given to be filled (a subclass's ``output_volume`` /
        ``output_segmentation``) is of that class and none of the inputs, which are never changed."""
        for kind, node_class in OUTPUT_CLASSES.items():
            node = getattr(self, f"output_{kind}", None)
            if node is None:
                continue
            if not node.IsA(node_class) or node.IsA("vtkMRMLLabelMapVolumeNode"):
                raise InputError(f"output {kind} '{node.GetName()}': is a {node.GetClassName()}, not a {node_class}; "
                                 f"choose a {kind} node, or none for a new one")  # fmt: skip
            if node.GetID() in self.input_ids:
                raise InputError(f"output {kind} '{node.GetName()}': is also an input of this {self.title}, which is "
                                 "never changed; choose another output node, or none for a new one")  # fmt: skip

    def _in_module_terms(self, text: str) -> str:
        """The child's message in the panel's terms: node names for the files it was given, the panel's field
        labels for its options (``options``), no temporary paths; terminal commands it quotes are kept."""
        parts = TERMINAL_COMMAND.split(text)
        commands = TERMINAL_COMMAND.findall(text)
        said = [self._panel_terms(part) for part in parts]
        return "".join(p + c for p, c in zip(said, [*commands, ""]))

    def _panel_terms(self, text: str) -> str:
        for path, name in self.exported.items():
            text = text.replace(str(path), f"node '{name}'")
        for path, name in self.exported.items():  # then bare file names (the LAX table's and its warnings' keys)
            text = text.replace(path.name, f"node '{name}'")
        if self.folder is not None:
            text = text.replace(f"--out {self.folder / 'out'}", self.OUT_FOLDER).replace(str(self.folder / "out"), self.OUT_FOLDER)
            text = text.replace(str(self.folder), "the module's temporary folder")
        for option, hint in MODULE_HINTS.items():
            text = text.replace(option, hint)
        options = {"--out": self.OUT_FOLDER, **self.options}
        names = "|".join(re.escape(o) for o in sorted(options, key=len, reverse=True))
        option = rf"(?<![\w-])({names})(?![\w-])"
        text = re.sub(rf"\b(?:use|pass|give) {option} (?!node ')([\w.:,-]+)", lambda m: f"set {options[m[1]]} to {m[2]}", text)
        text = re.sub(rf"\({option}\)", lambda m: f"(the panel's {options[m[1]]})", text)
        return re.sub(option, lambda m: options[m[1]], text)

    def _forward(self, message: Message) -> None:
        """The child's message to :meth:`_on_message`, unless the job was cancelled (nothing is said after that)."""
        if not self._cancelled:
            self._on_message(message)

    def _on_message(self, message: Message) -> None:
        """The child's progress and log lines, in the panel's terms (its warnings and 'wrote ... to' lines name
        options and temporary paths), to the log and the progress callback."""
        text = self._in_module_terms(message.text) if message.text else message.text
        if message.kind == "progress" and message.progress is not None:
            fraction = CHILD_START + (CHILD_END - CHILD_START) * min(max(message.progress, 0.0), 1.0)
            self._report(fraction, text)
        elif text:
            self.log.append(text)
            self._report(None, text)

    def _report(self, fraction: float | None, text: str) -> None:
        if self._callback is not None:
            self._callback(fraction, text)

    def _cleanup(self) -> None:
        if self.folder is not None and not self.keep_files:
            shutil.rmtree(self.folder, ignore_errors=True)


def _nodes(scene) -> list:
    return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]


def _node_ids(scene) -> set[str]:
    return {node.GetID() for node in _nodes(scene)}


def write_label_node(node, path: Path, reference=None, numbering: str = "project") -> Path:
    """A labelmap volume or a segmentation (segments matched by name) written as a label file in the project's
    numbering (1 LV cavity, 2 LV myocardium, 3 RV cavity).

    A segmentation is written on ``reference`` (a SimpleITK image) or, without one, on its own
    reference geometry. A labelmap volume in another ``numbering`` (``LABEL_NUMBERINGS``) is converted here,
    not by the command's ``--label-convention``, which would also renumber the segmentations written beside it.
    """
    if node.IsA("vtkMRMLSegmentationNode"):
        mrml._segment_values(node.GetSegmentation(), f"segmentation {node.GetName()!r}", None)  # before its grid
        grid = reference if reference is not None else reference_image_of_segmentation(node)
        sitk.WriteImage(mrml.labels_from_segmentation(node, grid), str(path), True)
    elif node.IsA("vtkMRMLVolumeNode") and checked_numbering(numbering) != "project":
        image = mrml.image_from_volume_node(node)
        values = convert_labels(sitk.GetArrayViewFromImage(image), numbering, name=f"node '{node.GetName()}'",
                                hint="ACDC numbering is 1 RV cavity, 2 LV myocardium, 3 LV cavity; relabel other values to 0")  # fmt: skip
        converted = sitk.GetImageFromArray(values)
        converted.CopyInformation(image)
        sitk.WriteImage(converted, str(path), True)
    elif node.IsA("vtkMRMLVolumeNode"):
        mrml.save_volume(node, path)
    else:
        raise InputError(f"node '{node.GetName()}': is a {node.GetClassName()}; give a labelmap volume or a segmentation")
    return Path(path)


def reference_image_of_segmentation(node) -> sitk.Image:
    """An empty image on a segmentation's reference geometry (e.g. the LAX plane it was drawn on), in world
    coordinates: moved by the node's linear parent transform, as its segments are."""
    import slicer

    converter = slicer.vtkSegmentationConverter
    geometry = node.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName())
    if not geometry:
        raise InputError(
            f"{node.GetName()}: segmentation has no reference geometry; export it to a labelmap volume "
            "on the image it was drawn on first"
        )
    oriented = slicer.vtkOrientedImageData()
    converter.DeserializeImageGeometry(geometry, oriented, False)
    import vtk

    matrix = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(matrix)
    extent = oriented.GetExtent()
    size = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    ras = mrml._to_world(node, f"segmentation {node.GetName()!r}") @ mrml._numpy_matrix(matrix)
    ras[:, 3] = ras @ [extent[0], extent[2], extent[4], 1.0]
    origin, spacing, direction = mrml.geometry_from_ijk_to_ras(ras, node.GetName())
    image = sitk.Image(size, sitk.sitkUInt8)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image
