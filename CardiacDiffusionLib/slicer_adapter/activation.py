"""The ActivationMap module's logic without Qt: labelled SAX slices + strain or TOS -> painted myocardium.

``ActivationJob`` writes the SAX labels (and optional image) to a temporary folder, runs
``cardiac-diffusion lma`` as a child process and loads, as NEW nodes: the myocardium surface model
with the ``TOS_ms`` point scalars on a colour table with a colour legend, the AHA bullseye image and a
table of the 17 segments (with the suggested lead segment: decision support, not a diagnosis).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from . import mrml
from .job import CLIJob, checked_numbering, write_label_node

METHODS = ("shape", "sadir")
TOS_METHODS = ("detector", "regressor")
TOS_ARRAY = "TOS_ms"  # the point array the CLI paints (activation.mapping.TOS_ARRAY)
#: columns of the segment table, from lma.json's "segments" rows
SEGMENT_COLUMNS = ("tos_median_ms", "tos_mean_ms", "points", "late_fraction", "late", "septal", "scar")


@dataclass
class ActivationResult:
    model: object  # vtkMRMLModelNode with TOS_ms point scalars
    bullseye: object  # vtkMRMLVectorVolumeNode (RGBA image, one slice)
    table: object  # vtkMRMLTableNode, one row per AHA segment
    lma: dict = field(default_factory=dict)  # lma.json: lead, QA flags, late rule ...
    log: list[str] = field(default_factory=list)


def polydata_lps_to_ras(polydata):
    """A copy of ``polydata`` with points mirrored LPS -> RAS (point data kept; two flips keep orientation)."""
    import vtk

    transform = vtk.vtkTransform()
    transform.Scale(-1.0, -1.0, 1.0)
    flip = vtk.vtkTransformPolyDataFilter()
    flip.SetTransform(transform)
    flip.SetInputData(polydata)
    flip.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(flip.GetOutput())
    return out


def color_legend(model_node):
    """Show a colour legend for the model's scalars; None where the Colors module's nodes are absent."""
    import slicer

    scene = model_node.GetScene()
    if scene is None or not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        return None
    return slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(model_node)


def image_node_from_png(scene, path: Path, name: str):
    """A vector volume node holding an RGB(A) PNG (VTK's reader: ITK in slicer-core has no PNG IO)."""
    import vtk

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = vtk.vtkImageData()
    image.DeepCopy(reader.GetOutput())
    if image.GetNumberOfPoints() == 0:
        raise InputError(f"{path}: could not be read as a PNG image")
    image.SetOrigin(0.0, 0.0, 0.0)
    image.SetSpacing(1.0, 1.0, 1.0)
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", scene.GenerateUniqueName(name))
    node.SetAndObserveImageData(image)
    # VTK's reader puts the picture's bottom row at j = 0: i -> L, j -> A shows it upright in an axial view
    node.SetIJKToRASDirections(-1, 0, 0, 0, 1, 0, 0, 0, 1)
    node.CreateDefaultDisplayNodes()
    return node


class ActivationJob(CLIJob):
    """One late-mechanical-activation map of a labelled SAX stack; see the module docstring."""

    command = "lma"
    title = "activation map"

    def __init__(
        self, scene, sax_labels, strain_file: str | None = None, tos_file: str | None = None, sax_volume=None,
        rv_insertion=None, method: str = "shape", spacing: float = 1.0, frame_ms: float = 17.0,
        tos_method: str = "detector", late_percentile: float = 75.0, scar: Sequence[int] = (),
        python: str | None = None, keep_files: bool = False, label_numbering: str = "project",
    ):  # fmt: skip
        super().__init__(scene, python, keep_files)
        if sax_labels is None:
            raise InputError("SAX labels: none selected; choose the labelmap or segmentation of the SAX stack")
        files = [f for f in (strain_file, tos_file) if f]
        if len(files) != 1:
            raise InputError("TOS source: give exactly one of a strain file (.npy) or a TOS table (.csv)")
        if not Path(files[0]).is_file():
            raise InputError(f"{files[0]}: file not found; choose the strain .npy or TOS .csv file")
        if method not in METHODS:
            raise InputError(f"method {method!r} is unknown; use one of {METHODS}")
        if tos_method not in TOS_METHODS:
            raise InputError(f"TOS method {tos_method!r} is unknown; use one of {TOS_METHODS}")
        if not spacing > 0 or not frame_ms > 0:
            raise InputError(f"spacing ({spacing} mm) and frame interval ({frame_ms} ms) must be positive")
        if not 0 < late_percentile < 100:
            raise InputError(f"late percentile must be in (0, 100), got {late_percentile}")
        self.label_numbering = checked_numbering(label_numbering)  # of a labelmap; a segmentation goes by name
        self.sax_labels, self.sax_volume, self.rv_insertion = sax_labels, sax_volume, rv_insertion
        self.strain_file, self.tos_file = strain_file or None, tos_file or None
        self.method, self.spacing, self.frame_ms, self.tos_method = method, float(spacing), float(frame_ms), tos_method
        self.late_percentile, self.scar = float(late_percentile), [int(s) for s in scar]

    def _export(self, folder: Path) -> list[str]:
        labels = self._exported(folder / "sax_labels.nrrd", self.sax_labels)
        if self.sax_volume is not None:
            mrml.save_volume(self.sax_volume, self._exported(folder / "sax.nrrd", self.sax_volume))
            write_label_node(self.sax_labels, labels, mrml.image_from_volume_node(self.sax_volume), self.label_numbering)
            arguments = ["--slices", str(folder / "sax.nrrd"), "--slice-labels", str(labels)]
        else:
            write_label_node(self.sax_labels, labels, numbering=self.label_numbering)
            arguments = ["--slices", str(labels)]
        if self.strain_file:
            arguments += ["--strain", str(self.strain_file), "--frame-ms", repr(self.frame_ms)]
            arguments += ["--tos-method", self.tos_method]
        else:
            arguments += ["--tos-csv", str(self.tos_file)]
        if self.rv_insertion is not None and self.rv_insertion.GetNumberOfControlPoints():
            points = mrml.points_from_markups(self.rv_insertion)
            arguments += ["--rv-insertion", *(",".join(repr(float(v)) for v in p) for p in points)]
        arguments += ["--method", self.method, "--spacing", repr(self.spacing)]
        arguments += ["--late-percentile", repr(self.late_percentile)]
        if self.scar:
            arguments += ["--scar", *map(str, self.scar)]
        return arguments

    def _load(self, out: Path) -> ActivationResult:
        from ..activation.mapping import read_vtp

        base = f"{self.sax_labels.GetName()} activation"
        lma = json.loads((out / "lma.json").read_text())
        mesh = polydata_lps_to_ras(read_vtp(out / "myocardium_tos.vtp"))
        model = mrml.model_from_polydata(self.scene, mesh, f"{base} TOS", scalars=TOS_ARRAY)
        color_legend(model)
        bullseye = image_node_from_png(self.scene, out / "bullseye.png", f"{base} bullseye")
        lead = lma.get("lead", {}).get("segment")
        rows = {
            f"{row['segment']} {row['name']}": {
                **{c: (None if row.get(c) is None else float(row[c])) for c in SEGMENT_COLUMNS},
                "suggested_lead": float(row["segment"] == lead),
            }
            for row in lma["segments"]
        }
        table = mrml.table_from_dict(self.scene, rows, f"{base} AHA segments", row_header="segment")
        return ActivationResult(model, bullseye, table, lma, list(self.log))
