"""The ActivationMap module's logic without Qt: labelled SAX slices + strain or TOS -> painted myocardium.

``ActivationJob`` writes the SAX labels (and optional image) to a temporary folder, runs
``cardiac-diffusion lma`` as a child process and loads, as NEW nodes: the myocardium surface model
with the ``TOS_ms`` point scalars on a colour table with a colour legend (and the ``late_activation`` and
``aha_segment`` arrays), the sector points (``sector_points.vtp``: 18 mid-wall points per TOS slice with the TOS
given or measured there, in the surface's colour range), the AHA bullseye image and a table of the 17 segments
(with the suggested lead segment: decision support, not a diagnosis). SAX inputs that are a cine's proxy
nodes are read at the frame their browser shows; ``frames`` says which and the outputs' attributes keep it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from . import mrml, sequences
from .job import CLIJob, checked_numbering, write_label_node

METHODS = ("shape", "sadir")
TOS_METHODS = ("detector", "regressor")
DEVICES = ("auto", "cpu", "cuda")  # the SADIR myocardium's (--device)
TOS_ARRAY = "TOS_ms"  # the point array the CLI paints (activation.mapping.TOS_ARRAY)
LATE_ARRAY = "late_activation"  # 0/1 per mesh point (activation.mapping.LATE_ARRAY)
#: columns of the segment table, from lma.json's "segments" rows
SEGMENT_COLUMNS = ("tos_median_ms", "tos_mean_ms", "points", "late_fraction", "late", "septal", "scar")


@dataclass
class ActivationResult:
    model: object  # vtkMRMLModelNode with TOS_ms, late_activation and aha_segment point arrays
    bullseye: object  # vtkMRMLVectorVolumeNode (RGBA image, one slice)
    table: object  # vtkMRMLTableNode, one row per AHA segment
    lma: dict = field(default_factory=dict)  # lma.json: lead, QA flags, late rule ...
    log: list[str] = field(default_factory=list)
    sector_points: object = None  # vtkMRMLModelNode: the 18 mid-wall sector points per TOS slice, TOS_ms as measured
    frames: list[str] = field(default_factory=list)  # each proxy input's cine frame, e.g. "node 'cine': frame 4 of 25 ..."


def parse_numbers(text: str, what: str) -> list[int]:
    """Whole numbers and ranges from text like ``'5, 11; 13-15'`` (in that order), or an InputError naming ``what``."""
    numbers: list[int] = []
    for token in filter(None, re.split(r"[\s,;]+", text or "")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", token)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise InputError(f"{what}: {token!r} is not a number or a range like 13-15; separate them by commas")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        numbers += range(first, last + 1)
    return numbers


def checked_segments(segments: Sequence[int], what: str = "scar segments") -> list[int]:
    """AHA segment numbers, sorted, each once; an InputError for a number outside 1-17."""
    from ..activation.bullseye import NAMES

    bad = sorted({int(s) for s in segments if int(s) not in NAMES})
    if bad:
        raise InputError(f"{what}: {bad} are not AHA segments; give segment numbers 1-17")
    return sorted({int(s) for s in segments})


def checked_slices(slices: Sequence[int], what: str = "strain slices") -> list[int]:
    """0-based stack slice indices in the given order (one per strain row), each once."""
    slices = [int(k) for k in slices]
    repeated = sorted({k for k in slices if slices.count(k) > 1})
    wrong = [f"{k} is negative" for k in slices if k < 0] + [f"{k} given more than once" for k in repeated]
    if wrong:
        raise InputError(f"{what}: {', '.join(wrong)}; give each 0-based slice index (the K index of the SAX volume) "
                         "once, one per strain row, in the rows' order")  # fmt: skip
    return slices


def checked_strain(path: str, slices: Sequence[int] = ()) -> None:
    """An InputError, in the panel's words, for a strain file the ``lma`` command would refuse by itself (not an
    array, wrong shape, NaN, percent) or whose rows are not one per given strain slice."""
    from ..activation.tos import check_strain, load_strain

    name = f"Strain (.npy) {path}"
    strain = check_strain(load_strain(path, name=name), name=name)
    if slices and len(slices) != len(strain):
        raise InputError(f"strain slices: {len(slices)} given for the {len(strain)} strain rows of {path}; give "
                         "one stack slice per row, in the rows' order (or leave them empty)")  # fmt: skip


def late_threshold_range() -> tuple[float, float]:
    """(above, at most) ms: the late threshold the ``lma`` command takes (the physiological TOS range)."""
    from ..activation.tos import TOS_RANGE_MS

    return TOS_RANGE_MS


def sadir_max_spacing() -> float:
    """The coarsest through-plane spacing (mm) ``lma --method sadir`` takes (the panel offers up to 20 for shape)."""
    from ..activation.pipeline import SADIR_MAX_SPACING_MM

    return SADIR_MAX_SPACING_MM


def ras_words(node, index: int) -> str:
    """Control point ``index`` of a markups node as the panel's user placed it: ``'F' point 1 at RAS (x, y, z) mm``."""
    ras = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(index, ras)
    return f"'{node.GetName()}' point {index + 1} at RAS ({', '.join(f'{v:.1f}' for v in ras)}) mm"


def checked_markups(node, what: str):
    """``node`` if it is None or a point list (``vtkMRMLMarkupsFiducialNode``) holding at least one point, every
    one placed; else an InputError naming the field ``what`` and the node (a curve, line, plane or ROI has control
    points too, which are not the point asked for)."""
    if node is None:
        return None
    if not node.IsA("vtkMRMLMarkupsFiducialNode"):
        raise InputError(f"{what} '{node.GetName()}': is a {node.GetClassName()}, not a point list; "
                         "place the point(s) in a markups point list")  # fmt: skip
    count = node.GetNumberOfControlPoints()
    if count == 0:
        raise InputError(f"{what} '{node.GetName()}': the point list holds no points; place one, or leave the "
                         "field empty")  # fmt: skip
    unplaced = [i + 1 for i in range(count) if node.GetNthControlPointPositionStatus(i) != node.PositionDefined]
    if unplaced:
        raise InputError(f"{what} '{node.GetName()}': point(s) {unplaced} of {count} of the list are not placed; "
                         "place them or delete them")  # fmt: skip
    return node


def _one_point(node, what: str):
    """The LPS point of a point list holding exactly one placed point; None for no node."""
    if checked_markups(node, f"{what} point") is None:
        return None
    count = node.GetNumberOfControlPoints()
    if count != 1:
        raise InputError(f"{what} point list '{node.GetName()}': holds {count} points; place exactly one")
    return mrml.points_from_markups(node)[0]


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


def same_colours(surface, points, point_size: float = 8.0) -> tuple[float, float]:
    """Show the sector points as large dots with the surface's colours for the same TOS (one manual range over
    both: the painted surface interpolates the points' values); returns that range in ms."""
    from vtk.util.numpy_support import vtk_to_numpy

    values = [vtk_to_numpy(n.GetPolyData().GetPointData().GetArray(TOS_ARRAY)) for n in (surface, points)]
    low, high = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
    for node in (surface, points):
        display = node.GetDisplayNode()
        display.SetScalarRangeFlag(display.UseManualScalarRange)
        display.SetScalarRange(low, high)
    points.GetDisplayNode().SetPointSize(point_size)
    return low, high


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
    """One late-mechanical-activation map of a labelled SAX stack; see the module docstring.

    Options are the ``lma`` command's, with the CLI's defaults: ``late_threshold_ms`` (late region TOS >= this
    many ms, instead of ``late_percentile``), ``include_apical`` (apical free-wall segments may be suggested),
    ``scar`` (AHA segments 1-17, never suggested), ``strain_slices`` (stack slice of each strain row),
    ``base``/``apex`` (markups with one point each, overriding the estimated LV base/apex), ``device`` (sadir).
    """

    command = "lma"
    title = "activation map"
    options = {
        "--slices": "SAX labels", "--slice-labels": "SAX labels", "--rv-insertion": "RV insertion", "--strain": "Strain (.npy)",
        "--strain-slices": "Strain slices", "--tos-csv": "TOS table (.csv)", "--base": "LV base point",
        "--apex": "LV apex point", "--label-convention": "Label numbering", "--frame-ms": "Strain frame interval",
        "--tos-method": "TOS from strain", "--method": "Myocardium", "--spacing": "Through-plane spacing",
        "--late-percentile": "Late region percentile", "--late-threshold": "late region from", "--scar": "Scar segments",
        "--include-apical": "Apical lead segments", "--device": "Device (sadir)",
    }  # fmt: skip

    def __init__(
        self, scene, sax_labels, strain_file: str | None = None, tos_file: str | None = None, sax_volume=None,
        rv_insertion=None, method: str = "shape", spacing: float = 1.0, frame_ms: float = 17.0,
        tos_method: str = "detector", late_percentile: float = 75.0, scar: Sequence[int] = (),
        python: str | None = None, keep_files: bool = False, label_numbering: str = "project",
        late_threshold_ms: float | None = None, include_apical: bool = False,
        strain_slices: Sequence[int] | None = None, base=None, apex=None, device: str = "auto",
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
        if device not in DEVICES:
            raise InputError(f"device {device!r} is unknown; use one of {DEVICES}")
        if not spacing > 0 or not frame_ms > 0:
            raise InputError(f"spacing ({spacing} mm) and frame interval ({frame_ms} ms) must be positive")
        if method == "sadir" and not spacing <= sadir_max_spacing():  # the command's limit, said before the child
            raise InputError(f"Through-plane spacing {spacing:g} mm: the sadir Myocardium takes 0.1 to "
                             f"{sadir_max_spacing():g} mm (its model's grid is 1.75 mm); lower it, or choose shape")  # fmt: skip
        if not 0 < late_percentile < 100:
            raise InputError(f"late percentile must be in (0, 100), got {late_percentile}")
        if late_threshold_ms is not None:
            low, high = late_threshold_range()
            if not low < late_threshold_ms <= high:
                raise InputError(f"late threshold {late_threshold_ms:g} ms: give a TOS above {low:g} and at most "
                                 f"{high:g} ms (the physiological range), or none to use the percentile")  # fmt: skip
        if strain_slices and not strain_file:
            raise InputError("strain slices: they name the stack slice of each strain row; with a TOS table "
                             "(whose rows name their slices) leave them empty")  # fmt: skip
        self.label_numbering = checked_numbering(label_numbering)  # of a labelmap; a segmentation goes by name
        # --slices is the SAX image when one is given, else the labels (read as image and labels)
        slices = "SAX image" if sax_volume is not None else "SAX labels"
        # the command names the labels it reads with --slices "--slices labels": the panel's SAX labels field
        self.options = {**self.options, "--slices (labels)": "SAX labels", "--slices labels": "SAX labels",
                        "--slices": slices}  # fmt: skip
        self.sax_labels, self.sax_volume = sax_labels, sax_volume
        self.rv_insertion = checked_markups(rv_insertion, "RV insertion")
        self.strain_file, self.tos_file = strain_file or None, tos_file or None
        self.method, self.spacing, self.frame_ms, self.tos_method = method, float(spacing), float(frame_ms), tos_method
        self.late_percentile, self.scar = float(late_percentile), checked_segments(scar)
        self.late_threshold_ms = None if late_threshold_ms is None else float(late_threshold_ms)
        self.include_apical, self.device = bool(include_apical), device
        self.strain_slices = checked_slices(strain_slices or ())
        if self.strain_file:  # the file's shape, values and rows against the strain slices: before the child starts
            checked_strain(self.strain_file, self.strain_slices)
        self.base, self.apex = (_one_point(node, what) for node, what in ((base, "LV base"), (apex, "LV apex")))
        self.base_node, self.apex_node = base, apex
        self.points_said: dict[str, str] = {}  # LPS text of a point as the command says it -> the markup in RAS

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
        if self.rv_insertion is not None:
            points = mrml.points_from_markups(self.rv_insertion)
            arguments += ["--rv-insertion", *(",".join(repr(float(v)) for v in p) for p in points)]
            for index, point in enumerate(points):  # the command names a point in LPS as it parsed it (f"{v:g}")
                self.points_said[",".join(f"{float(v):g}" for v in point)] = ras_words(self.rv_insertion, index)
        arguments += ["--method", self.method, "--spacing", repr(self.spacing)]
        if self.late_threshold_ms is not None:
            arguments += ["--late-threshold", repr(self.late_threshold_ms)]
        else:
            arguments += ["--late-percentile", repr(self.late_percentile)]
        if self.scar:
            arguments += ["--scar", *map(str, self.scar)]
        if self.include_apical:
            arguments += ["--include-apical"]
        if self.strain_slices:
            arguments += ["--strain-slices", ",".join(map(str, self.strain_slices))]
        for option, point, node in (("--base", self.base, self.base_node), ("--apex", self.apex, self.apex_node)):
            if point is not None:
                arguments += [option, ",".join(repr(float(v)) for v in point)]
                self.points_said[",".join(f"{float(v):g}" for v in point)] = ras_words(node, 0)
        if self.method == "sadir":
            arguments += ["--device", self.device]
        return arguments + ["--progress", "json"]

    def _panel_terms(self, text: str) -> str:
        """The base class's, with a point the command names in LPS said as the markup the user placed in RAS."""
        for lps, said in self.points_said.items():
            for option in ("--rv-insertion", "--base", "--apex"):
                text = text.replace(f"{option} {lps}:", f"{option} {said}:")
        return super()._panel_terms(text)

    def _load(self, out: Path) -> ActivationResult:
        from ..activation.mapping import read_vtp

        base = f"{self.sax_labels.GetName()} activation"
        lma = json.loads((out / "lma.json").read_text())
        for qa_flag in lma.get("qa", []):  # the panel shows them: node names, field labels and RAS points
            qa_flag["message"] = self._in_module_terms(qa_flag["message"])
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
        points = mrml.model_from_polydata(
            self.scene, polydata_lps_to_ras(read_vtp(out / "sector_points.vtp")), f"{base} sector TOS",
            scalars=TOS_ARRAY, color_node_id=model.GetDisplayNode().GetColorNodeID(),
        )  # fmt: skip
        same_colours(model, points)
        source = self.sax_volume if self.sax_volume is not None else self.sax_labels
        frame = self.frames.get(source.GetID()) or self.frames.get(self.sax_labels.GetID())
        for node in (model, bullseye, table, points):
            sequences.record_source(node, frame)
        frames = [f"node '{f.node}': {f.describe()}" for f in self.frames.values()]
        return ActivationResult(model, bullseye, table, lma, list(self.log), points, frames)
