"""The Reconstruction module's logic without Qt: export inputs, run the CLI as a child, load outputs.

``ReconstructionJob(scene, sax_volume, ...)`` writes its inputs to a temporary folder, runs
``python -m CardiacDiffusionLib.cli.main reconstruct ...`` (``PythonSlicer`` in Slicer) and, once
the child succeeded, adds NEW nodes: the reconstructed volume, a segmentation with named, coloured
segments and 3D surfaces, and a table of LAX Dice: the method's rows, or with ``baselines=True`` (the module's
Logic) the classical methods' rows beside them, ``"<plane> · <method>"``, and a ``summary`` line per plane (the
default keeps the table's layout before them, which the batch script writes). Nothing is added to the scene before
that, so a cancelled or failed job leaves the scene as it was. A SAX volume that is a cine's proxy node is read at the
frame its browser shows: ``frames`` says which, and the outputs' attributes keep it (``sequences``); an output
node that is a proxy is refused. ``cine.FramesJob`` reconstructs several frames into volume sequences.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk

from ..errors import InputError
from ..reconstruction.lax_check import compare_with_baselines, side_by_side
from . import mrml, sequences
from .job import CLIJob, checked_numbering, write_label_node

METHODS = ("dmcvr", "shape", "linear", "nearest")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ReconstructionResult:
    volume: object  # vtkMRMLScalarVolumeNode
    segmentation: object | None  # vtkMRMLSegmentationNode
    table: object | None  # vtkMRMLTableNode of LAX Dice (with baselines: rows "<plane> · <method>", the method first)
    lax_dice: dict = field(default_factory=dict)  # {plane: {label: dice}} of the chosen method
    baselines: dict = field(default_factory=dict)  # {baseline method: {plane: {label: dice}}} on the same planes
    summary: list[str] = field(default_factory=list)  # per plane: the method's mean Dice beside the best baseline's
    log: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # labels of maybe another cine frame, then geometry.json's
    frames: list[str] = field(default_factory=list)  # each proxy input's cine frame, e.g. "node 'cine': frame 4 of 25 ..."


def _positive_ratio(value) -> bool:
    """A number above 0 (inf included; no NaN, bool or text): the roughness guard's bound."""
    try:
        return not isinstance(value, (bool, str)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "node"


class ReconstructionJob(CLIJob):
    """One reconstruction of a SAX volume node; see the module docstring."""

    command = "reconstruct"
    options = {
        "--sax": "SAX volume", "--sax-labels": "SAX labels", "--lax-labels": "LAX labels", "--method": "Method",
        "--sax labels": "SAX labels",  # how the command names the labels it reads with --sax (ActivationMap's too)
        "--spacing": "Target spacing", "--steps": "DDIM steps", "--shape-prior": "Shape prior", "--device": "Device",
        "--model": "DMCVR model", "--label-convention": "Label numbering",
    }  # fmt: skip

    def __init__(
        self, scene, sax_volume, sax_labels=None, lax_label_nodes: Sequence = (), method: str = "shape",
        spacing: float = 1.0, steps: int | None = None, device: str = "auto", python: str | None = None,
        output_volume=None, output_segmentation=None, keep_files: bool = False, shape_prior: float | None = None,
        label_numbering: str = "project", model: str | None = None, roughness_guard: float | str | None = None,
        baselines: bool = False,
    ):  # fmt: skip
        if sax_volume is None:
            raise InputError("SAX volume: none selected; choose the SAX stack to reconstruct")
        if method not in METHODS:
            raise InputError(f"method {method!r} is unknown; use one of {METHODS}")
        if device not in DEVICES:
            raise InputError(f"device {device!r} is unknown; use one of {DEVICES}")
        if not (math.isfinite(spacing) and spacing > 0):
            raise InputError(f"target spacing must be a positive number of mm, got {spacing}")
        if steps is not None and method == "dmcvr" and int(steps) < 1:  # the panel's 0 arrives as None: the default
            raise InputError(f"DDIM steps must be at least 1 (or 0 on the panel for the model's default), got {steps}")
        if shape_prior is not None and not 0 <= shape_prior < 1:  # dmcvr()'s own bound, checked before the child starts
            raise InputError(f"shape prior weight must be in [0, 1) (0 = the network's labels alone), got {shape_prior}")
        if isinstance(roughness_guard, str) and roughness_guard.strip().lower() == "off":
            roughness_guard = math.inf
        if roughness_guard is not None and not _positive_ratio(roughness_guard):  # the command's bound, checked here
            raise InputError(f"roughness_guard must be a ratio above 0 (default 1.2; inf or 'off': off), got {roughness_guard!r}")
        sequences.check_not_proxy(output_volume, "output volume")  # never written into a cine's frame
        sequences.check_not_proxy(output_segmentation, "output segmentation")
        super().__init__(scene, python, keep_files)
        self.sax_volume = sax_volume
        self.label_numbering = checked_numbering(label_numbering)  # of labelmaps; segmentations go by name
        self.sax_labels = sax_labels
        self.lax_label_nodes = [n for n in lax_label_nodes if n is not None]
        self.method, self.spacing, self.steps, self.device = method, float(spacing), steps, device
        self.shape_prior = shape_prior  # dmcvr: weight of shape interpolation in generated labels; None: default
        self.roughness_guard = None if roughness_guard is None else float(roughness_guard)  # dmcvr; inf: off
        self.model = (model or "").strip() or None  # dmcvr: a registered name or a .safetensors file; None: shipped
        self.output_volume, self.output_segmentation = output_volume, output_segmentation
        self.baselines = bool(baselines)  # with LAX labels: nearest, linear and shape checked beside the method
        self.title = f"{method} reconstruction"
        self.frame_warnings: list[str] = []  # SAX or LAX labels that may be of another cine frame than the SAX volume

    # ---- inputs ---------------------------------------------------------------------------------
    def _export(self, folder: Path) -> list[str]:
        # NRRD keeps the geometry in full double precision (NIfTI's sform is float32)
        sax_path = self._exported(folder / "sax.nrrd", self.sax_volume)
        mrml.save_volume(self.sax_volume, sax_path)
        arguments = ["--method", self.method, "--sax", str(sax_path), *self._method_arguments()]
        if self.sax_labels is not None:
            path = self._exported(folder / "sax_labels.nrrd", self.sax_labels)
            write_label_node(self.sax_labels, path, mrml.image_from_volume_node(self.sax_volume), self.label_numbering)
            arguments += ["--sax-labels", str(path)]
            self._check_label_frame()
        if self.lax_label_nodes:
            paths = []
            for index, node in enumerate(self.lax_label_nodes):
                path = self._exported(folder / f"{index}_{_file_stem(node.GetName())}.nrrd", node)
                write_label_node(node, path, numbering=self.label_numbering)
                paths.append(str(path))
                self._check_lax_frame(node)
            arguments += ["--lax-labels", *paths]
            if not self.baselines:
                arguments.append("--no-baselines")
        return arguments

    def _method_arguments(self) -> list[str]:
        """The command's options after ``--method`` and ``--sax``: spacing, device, progress and dmcvr's settings."""
        arguments = ["--spacing", repr(self.spacing), "--device", self.device, "--progress", "json"]
        if self.steps is not None and self.method == "dmcvr":  # the command refuses it for the other methods
            arguments += ["--steps", str(int(self.steps))]
        if self.shape_prior is not None and self.method == "dmcvr":
            arguments += ["--shape-prior", repr(float(self.shape_prior))]
        if self.roughness_guard is not None and self.method == "dmcvr":
            guard = self.roughness_guard
            arguments += ["--roughness-guard", "off" if math.isinf(guard) else repr(guard)]
        if self.model is not None and self.method == "dmcvr":  # the command refuses it for the other methods
            arguments += ["--model", self.model]
        return arguments

    def _check_label_frame(self) -> None:
        """SAX labels beside a cine frame: a warning unless they are a proxy of the same browser."""
        frame = self.frames.get(self.sax_volume.GetID())
        labels = self.frames.get(self.sax_labels.GetID())
        if frame is not None and (labels is None or labels.browser != frame.browser):
            self.frame_warnings.append(
                f"SAX labels '{self.sax_labels.GetName()}' do not follow sequence browser '{frame.browser}' of the "
                f"SAX volume: check that they were drawn on the frame used, {frame.describe()}"
            )

    def _check_lax_frame(self, node) -> None:
        """LAX labels beside a cine frame: a warning unless they are a proxy of the same browser (the same time; a
        proxy with no item there was refused by ``_exported``). A LAX cine in another browser is named at its frame."""
        frame, lax = self.frames.get(self.sax_volume.GetID()), self.frames.get(node.GetID())
        if frame is None or (lax is not None and lax.browser == frame.browser):
            return
        if lax is None:
            self.frame_warnings.append(
                f"LAX labels '{node.GetName()}' do not follow sequence browser '{frame.browser}' of the SAX volume: "
                f"check that they were drawn on the frame used, {frame.describe()}"
            )
            return
        self.frame_warnings.append(
            f"LAX labels '{node.GetName()}' are read at {lax.describe()} (sequence browser '{lax.browser}'), the SAX "
            f"volume at {frame.describe()} (sequence browser '{frame.browser}'): two browsers, so the frames may be "
            "of different cardiac phases; check that they match (or put both sequences in one browser)"
        )

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
        table, lax_dice, baselines, summary = None, {}, {}, []
        dice_path = out / "lax_dice.json"
        if dice_path.exists():
            names = {path.name: name for path, name in self.exported.items()}  # lax_dice.json keys are file names
            lax_dice = {names.get(k, k): v for k, v in json.loads(dice_path.read_text()).items()}
            rows, header = lax_dice, "LAX"
            if (out / "lax_dice_baselines.json").exists():
                raw = json.loads((out / "lax_dice_baselines.json").read_text())
                baselines = {m: {names.get(k, k): v for k, v in t.items()} for m, t in raw["baselines"].items()}
                rows, header = side_by_side(self.method, lax_dice, baselines, sep=" · "), "LAX · method"
                summary = compare_with_baselines(self.method, lax_dice, baselines) + [f"note: {n}" for n in raw["notes"]]
            table = mrml.table_from_dict(self.scene, rows, f"{base} LAX Dice", row_header=header)
        said = [self._in_module_terms(w) for w in json.loads((out / "geometry.json").read_text()).get("warnings", [])]
        frame = self.frames.get(self.sax_volume.GetID())
        for node in (volume, segmentation, table):
            sequences.record_source(node, frame)
        frames = [f"node '{f.node}': {f.describe()}" for f in self.frames.values()]
        return ReconstructionResult(volume, segmentation, table, lax_dice, baselines, summary, list(self.log),
                                    self.frame_warnings + said, frames)  # fmt: skip
