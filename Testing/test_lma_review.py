"""Fresh-eyes review of the LMA workflow: the ActivationMap logic's point inputs (slicer-core), AHA conventions on
real and flipped geometry, outputs in physical space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from CardiacDiffusionLib.errors import InputError
from helpers import lbbb_stack_and_tos


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return lbbb_stack_and_tos(tmp_path_factory.mktemp("lma_review"))


MARKUPS = ("vtkMRMLMarkupsCurveNode", "vtkMRMLMarkupsClosedCurveNode", "vtkMRMLMarkupsLineNode",
           "vtkMRMLMarkupsAngleNode", "vtkMRMLMarkupsPlaneNode", "vtkMRMLMarkupsROINode")  # fmt: skip


@pytest.mark.mrml
@pytest.mark.parametrize("field", ["rv_insertion", "base", "apex"])
def test_point_fields_refuse_other_markups_and_empty_lists(mrml_scene, case, field):
    """A curve, line, angle, plane or ROI has control points too, and an empty or unplaced point list has no
    point: each is refused by field and node name before the child starts; the nodes are left as they were."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob

    stack, good = case
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    said = {"rv_insertion": "RV insertion", "base": "LV base point", "apex": "LV apex point"}[field]
    for cls in MARKUPS:
        node = mrml_scene.AddNewNodeByClass(cls, "drawn")
        node.AddControlPoint(10.0, 20.0, 30.0)  # one point, as a base/apex would hold: still not a point list
        with pytest.raises(InputError, match=rf"^{said} 'drawn': is a {cls}, not a point list"):
            ActivationJob(mrml_scene, labels, tos_file=str(good), **{field: node})
        assert node.GetNumberOfControlPoints() == 1
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty F")
    with pytest.raises(InputError, match=rf"^{said} 'empty F': the point list holds no points; place one"):
        ActivationJob(mrml_scene, labels, tos_file=str(good), **{field: empty})
    unplaced = mrml.markups_from_points(mrml_scene, np.array([[1.0, 2.0, 3.0]]), "half F")
    unplaced.UnsetNthControlPointPosition(0)  # added but not placed: its position is a stale (0, 0, 0)
    with pytest.raises(InputError, match=rf"^{said} 'half F': point\(s\) \[1\] of 1 of the list are not placed"):
        ActivationJob(mrml_scene, labels, tos_file=str(good), **{field: unplaced})
    # a point list with a placed point is taken
    point = mrml.markups_from_points(mrml_scene, np.array([[0.0, 0.0, 0.0]]), "F")
    ActivationJob(mrml_scene, labels, tos_file=str(good), **{field: point})


ACDC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"
SUNNYBROOK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sunnybrook-SC-HF-I-1"


def _segment_directions(result, axis) -> dict[int, np.ndarray]:
    """Unit in-plane direction, from the mesh's centre, of each AHA segment's points (1-16)."""
    from vtk.util.numpy_support import vtk_to_numpy

    from CardiacDiffusionLib.activation.mapping import mesh_points

    points = mesh_points(result.mesh)
    segment = vtk_to_numpy(result.mesh.GetPointData().GetArray("aha_segment"))
    out = {}
    for s in range(1, 17):
        d = (points[segment == s] - points.mean(0)).mean(0)
        d -= (d @ axis) * axis
        out[s] = d / np.linalg.norm(d)
    return out


@pytest.mark.skipif(not ACDC.is_dir(), reason="shared ACDC data missing")
@pytest.mark.parametrize("name", ["patient001_frame01", "patient044_frame01", "patient070_frame01"])
def test_real_acdc_septum_lands_in_septal_segments_as_stored_mirrored_or_reversed(name):
    """Real expert labels: the septal segments (2, 3, 8, 9, 14) lie towards the RV and the free wall away from it,
    for the file as stored, mirrored left-right and with its slices in reverse order (no orientation stored in ACDC
    HDF5, so nothing tells these apart); a map latest in the septum never suggests a septal lead segment.
    Measured (001, 044, 070; stored / mirrored / reversed): cos(in-plane direction of a septal segment, of the RV
    centroid) >= 0.52 (044 as stored; else >= 0.69), of a lateral segment <= -0.55 (angles run
    the other way from the insertion: segments 5-6 on the RV side)."""
    from dataclasses import replace

    from CardiacDiffusionLib.activation.bullseye import SEPTAL
    from CardiacDiffusionLib.activation.mapping import pixel_points
    from CardiacDiffusionLib.activation.pipeline import run_lma
    from CardiacDiffusionLib.activation.sectors import lv_frame
    from CardiacDiffusionLib.io.volumes import read_stack

    stored = read_stack(ACDC / f"{name}.h5")
    variants = {
        "stored": stored,
        "mirrored": replace(stored, pixels=stored.pixels[:, :, ::-1].copy(), labels=stored.labels[:, :, ::-1].copy()),
        "reversed": replace(stored, pixels=stored.pixels[::-1].copy(), labels=stored.labels[::-1].copy()),
    }
    for how, stack in variants.items():
        frame = lv_frame(stack)
        # septal sectors (1-6 of each slice, between the insertions) late, the free wall early
        tos = {int(k): np.r_[np.full(6, 250.0), np.full(12, 60.0)] for k in frame.slices}
        result = run_lma(stack, tos=tos)
        rv = np.concatenate([pixel_points(stack, k, np.argwhere(stack.labels[k] == 3)) for k in frame.slices])
        lv = np.concatenate([pixel_points(stack, k, np.argwhere(stack.labels[k] == 1)) for k in frame.slices])
        to_rv = rv.mean(0) - lv.mean(0)
        to_rv -= (to_rv @ frame.axis) * frame.axis
        to_rv /= np.linalg.norm(to_rv)
        cos = {s: float(d @ to_rv) for s, d in _segment_directions(result, frame.axis).items()}
        assert min(cos[s] for s in (2, 3, 8, 9, 14)) > 0.4, (how, cos)
        assert max(cos[s] for s in (5, 6, 11, 12, 16)) < -0.4, (how, cos)
        assert result.lead["segment"] is not None and result.lead["segment"] not in SEPTAL, (how, result.lead)
        late = {r["segment"] for r in result.segments if r["late"]}
        assert late and late <= set(SEPTAL), (how, late)


def sunnybrook_case(folder: Path):
    """The real Sunnybrook DICOM (oblique, apex first, phase 1) with its expert contours, the labels written to
    ``folder/labels.nii.gz``, and ``at(deg)``: an anterior-ish point 2 mm outside the mid slice's epicardium, deg from
    the patient's right towards anterior in the SAX plane. Returns (stack with labels, at, right, anterior)."""
    import SimpleITK as sitk

    from CardiacDiffusionLib.activation.mapping import pixel_points
    from CardiacDiffusionLib.io.contours import sunnybrook_labels
    from CardiacDiffusionLib.io.dicom import read_dicom_stack

    if not (SUNNYBROOK / "dicom").is_dir():
        pytest.skip("shared Sunnybrook data missing")
    stack = read_dicom_stack(SUNNYBROOK / "dicom", phase=1, name="sunnybrook")
    stack = stack.with_labels(sunnybrook_labels(stack, SUNNYBROOK / "contours")[0])
    sitk.WriteImage(stack.to_image(labels=True), str(folder / "labels.nii.gz"))
    normal = stack.normal / np.linalg.norm(stack.normal)
    right = _unit_in_plane(np.array([-1.0, 0.0, 0.0]), normal)  # LPS: the patient's right is -x, anterior -y
    anterior = _unit_in_plane(np.array([0.0, -1.0, 0.0]), normal, right)
    k = int(np.median([k for k in range(stack.n) if (stack.labels[k] == 2).any()]))
    centre = pixel_points(stack, k, np.argwhere(stack.labels[k] == 1)).mean(0)
    radius = np.linalg.norm(pixel_points(stack, k, np.argwhere(stack.labels[k] == 2)) - centre, axis=1).max()

    def at(deg):
        return centre + (radius + 2.0) * (np.cos(np.radians(deg)) * right + np.sin(np.radians(deg)) * anterior)

    return stack, at, right, anterior


@pytest.fixture(scope="module")
def sunnybrook_run(tmp_path_factory):
    """``cardiac-diffusion lma`` on :func:`sunnybrook_case` as a NIfTI label file, a random TOS table, scar 5 and 11
    and an anterior RV insertion placed by anatomy (60 deg). Returns (folder, stack with labels, the points, the
    in-plane patient right and anterior, the command's exit code)."""
    from CardiacDiffusionLib.activation.sectors import lv_frame
    from CardiacDiffusionLib.activation.tos import write_tos_csv
    from CardiacDiffusionLib.cli.main import main

    folder = tmp_path_factory.mktemp("sunnybrook_lma")
    stack, at, right, anterior = sunnybrook_case(folder)
    point = at(60.0)
    frame = lv_frame(stack, point)
    rng = np.random.default_rng(0)
    write_tos_csv(folder / "tos.csv", {int(s): np.round(rng.uniform(30, 200, 18), 1) for s in frame.slices})
    code = main(["lma", "--slices", str(SUNNYBROOK / "dicom"), "--phase", "1", "--slice-labels",
                 str(folder / "labels.nii.gz"), "--tos-csv", str(folder / "tos.csv"), "--scar", "5", "11",
                 "--rv-insertion", ",".join(repr(float(v)) for v in point), "--out", str(folder / "lma")])  # fmt: skip
    return folder, stack, {"anterior": point, "inferior": at(-60.0)}, right, anterior, code


def _unit_in_plane(v, *normals):
    for n in normals:
        v = v - (v @ n) * n
    return v / np.linalg.norm(v)


def _read_vtp(path):
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    reader = vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def test_real_sunnybrook_segments_face_the_patients_anatomy(sunnybrook_run):
    """Real oblique DICOM geometry (stored apex first): with the anterior insertion placed by anatomy the segments
    face the patient's anterior (1, 7, 13), right (septal 2, 3, 8, 9, 14), posterior-inferior (4, 10, 15) and left
    (5, 6, 11, 12, 16); no anatomy flag. Measured: cos with anterior 0.99-1.00 for 1/7/13, with right 0.82-0.99 for
    the septal segments, -0.80 to -1.00 for the lateral ones. The inferior insertion given instead is flagged
    (anatomy_mismatch, 96 deg from anterior), as are the slices stored in reverse order (slice_order_reversed)."""
    import json

    from CardiacDiffusionLib.activation.pipeline import run_lma

    folder, stack, points, right, anterior, code = sunnybrook_run
    assert code == 0
    lma = json.loads((folder / "lma" / "lma.json").read_text())
    axis = np.array(lma["frame"]["long_axis_lps"])
    assert axis @ stack.normal < -0.99  # base -> apex against the stored normal: apex first, as inspect says
    assert [f["code"] for f in lma["qa"]] == []  # largest LV-centre jump 3.8 mm (tolerance 4.5)

    class Mesh:  # the written surface, as _segment_directions reads a result
        mesh = _read_vtp(folder / "lma" / "myocardium_tos.vtp")

    d = _segment_directions(Mesh, axis)
    assert min(d[s] @ anterior for s in (1, 7, 13)) > 0.9
    assert min(d[s] @ right for s in (2, 3, 8, 9, 14)) > 0.7
    assert max(d[s] @ anterior for s in (4, 10, 15)) < -0.9
    assert max(d[s] @ right for s in (5, 6, 11, 12, 16)) < -0.7
    assert lma["lead"]["segment"] not in (2, 3, 8, 9, 14, 5, 11)
    # the inferior insertion given as the anterior one: the frame turns with it and lma.json says so
    tos = {int(r): v for r, v in zip(lma["tos_slices"], lma["tos_ms"])}
    flags = run_lma(stack, tos=tos, rv_insertion=points["inferior"]).lma["qa"]
    mismatch = [f["message"] for f in flags if f["code"] == "anatomy_mismatch"]
    assert len(mismatch) == 1 and "given (--rv-insertion)" in mismatch[0], flags
    # the slices' content stored in reverse order against the header (base and apex swapped): flagged
    from dataclasses import replace

    from CardiacDiffusionLib.activation import qa
    from CardiacDiffusionLib.activation.sectors import lv_frame

    normal = stack.normal / np.linalg.norm(stack.normal)
    k = int(np.argmin(np.abs((stack.origins - points["anterior"]) @ normal)))
    moved = points["anterior"] + ((stack.origins[stack.n - 1 - k] - stack.origins[k]) @ normal) * normal
    reversed_ = replace(stack, pixels=stack.pixels[::-1].copy(), labels=stack.labels[::-1].copy())
    assert [f["code"] for f in qa.anatomy_flags(reversed_, lv_frame(reversed_, moved))] == ["slice_order_reversed"]


def test_real_sunnybrook_outputs_sit_on_the_input_slices(sunnybrook_run):
    """The files an LPS DICOM + RAS-on-disk NIfTI labels give, read back with VTK and SimpleITK: the painted surface
    opens with TOS_ms active (ms, within the table's range), the myocardium labels cover the given myocardium on
    every labelled slice (Dice 1.000 on 9 slices) and the surface lies on their boundary (median 0.6 mm, max 1.0 mm,
    grid 1.37 mm); each sector point lies in its slice's plane with the table's value; the STL is the same surface;
    scar segments are flagged and skipped by the lead suggestion."""
    import csv
    import json

    import SimpleITK as sitk
    from vtk.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOGeometry import vtkSTLReader

    folder, stack, _, _, _, _ = sunnybrook_run
    out = folder / "lma"
    lma = json.loads((out / "lma.json").read_text())
    mesh = _read_vtp(out / "myocardium_tos.vtp")
    assert mesh.GetPointData().GetScalars().GetName() == "TOS_ms"
    points, tos = vtk_to_numpy(mesh.GetPoints().GetData()), vtk_to_numpy(mesh.GetPointData().GetArray("TOS_ms"))
    table = {(int(r["slice"]), int(r["sector"])): float(r["tos_ms"]) for r in csv.DictReader(open(folder / "tos.csv"))}
    given = np.array([[table[(k, s)] for s in range(1, 19)] for k in lma["tos_slices"]])
    assert given.min() - 1e-3 <= tos.min() and tos.max() <= given.max() + 1e-3 and tos.max() > 150
    # the labels on the input's grid, slice by slice
    labels_in = sitk.ReadImage(str(folder / "labels.nii.gz"))
    labels_out = sitk.ReadImage(str(out / "myocardium_labels.nii.gz"))
    on_input = sitk.GetArrayFromImage(sitk.Resample(labels_out, labels_in, sitk.Transform(), sitk.sitkNearestNeighbor))
    given_myo, got_myo = sitk.GetArrayFromImage(labels_in) == 2, on_input == 2
    slices = [k for k in range(len(given_myo)) if given_myo[k].any()]
    dice = [2 * (given_myo[k] & got_myo[k]).sum() / (given_myo[k].sum() + got_myo[k].sum()) for k in slices]
    assert len(slices) == 9 and min(dice) > 0.99, dice
    distance = sitk.SignedMaurerDistanceMap(labels_out == 2, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)  # fmt: skip
    off = np.abs([distance.EvaluateAtPhysicalPoint(p.tolist(), sitk.sitkLinear) for p in points[::25]])
    assert np.median(off) < 1.0 and off.max() < 1.5, (np.median(off), off.max())
    # sector points: in their slice's plane, the table's values
    sectors = _read_vtp(out / "sector_points.vtp")
    where = vtk_to_numpy(sectors.GetPoints().GetData()).reshape(len(given), 18, 3)
    np.testing.assert_allclose(vtk_to_numpy(sectors.GetPointData().GetArray("TOS_ms")), given.ravel(), atol=1e-3)
    normal = stack.normal / np.linalg.norm(stack.normal)
    for row, k in zip(where, lma["tos_slices"]):
        assert np.abs((row - stack.origins[k]) @ normal).max() < 1e-6
    stl = vtkSTLReader()
    stl.SetFileName(str(out / "myocardium.stl"))
    stl.Update()
    from scipy.spatial import cKDTree

    stl_points = vtk_to_numpy(stl.GetOutput().GetPoints().GetData())
    assert len(stl_points) == len(points) and cKDTree(points).query(stl_points)[0].max() < 1e-3  # its own order
    assert [r["segment"] for r in lma["segments"] if r["scar"]] == [5, 11] == lma["lead"]["excluded_scar"]
    assert lma["lead"]["segment"] not in (5, 11) and all(r["segment"] not in (5, 11) for r in lma["lead"]["ranked"])


def _markup_state(node) -> tuple:
    ras = [0.0, 0.0, 0.0]
    points = []
    for i in range(node.GetNumberOfControlPoints()):
        node.GetNthControlPointPositionWorld(i, ras)
        points.append((*ras, node.GetNthControlPointPositionStatus(i), node.GetNthControlPointLabel(i)))
    return node.GetMTime(), node.GetName(), points


@pytest.mark.mrml
def test_job_with_rv_insertion_points_leaves_them_unchanged(mrml_scene, case):
    """A run turned by a point list (placed in RAS at the label's insertion of each TOS slice, 30 deg on) and a run
    the child refuses (a point 300 mm away) leave the point list as it was; the run's frame takes the given points
    (``rv_insertion_source`` "user" on every TOS slice, each within 0.01 mm of its point, in LPS)."""
    import json
    import shutil

    from CardiacDiffusionLib.activation.sectors import lv_frame
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob
    from CardiacDiffusionLib.slicer_adapter.process import ProcessFailed

    stack, good = case
    frame = lv_frame(stack)
    turn = np.radians(30.0)
    points = [c + np.linalg.norm(p - c) * (np.cos(a + turn) * frame.e0 + np.sin(a + turn) * frame.e1)
              for p, c, a in zip(frame.insertion_points, frame.centres, frame.insertion_angles)]  # fmt: skip
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    markup = mrml.markups_from_points(mrml_scene, np.array(points), "RV insertion")
    before = _markup_state(markup)
    job = ActivationJob(mrml_scene, labels, tos_file=str(good), rv_insertion=markup, keep_files=True)
    try:
        result = job.start().wait(timeout=300)
        assert json.loads((job.folder / "out" / "lma.json").read_text())["coordinates"].startswith("LPS")
    finally:
        shutil.rmtree(job.folder, ignore_errors=True)
    assert _markup_state(markup) == before
    got = result.lma["frame"]
    tos_rows = [list(frame.slices).index(k) for k in result.lma["tos_slices"]]
    assert got["rv_insertion_source"] == ["user"] * len(tos_rows)
    np.testing.assert_allclose(got["rv_insertion_anterior_lps"], np.array(points)[tos_rows], atol=0.01)
    far = mrml.markups_from_points(mrml_scene, np.array([[300.0, 300.0, 300.0]]), "far point")
    before, count = _markup_state(far), mrml_scene.GetNumberOfNodes()
    job = ActivationJob(mrml_scene, labels, tos_file=str(good), rv_insertion=far)
    with pytest.raises(ProcessFailed, match="far point"):
        job.start().wait(timeout=300)
    assert _markup_state(far) == before and mrml_scene.GetNumberOfNodes() == count


@pytest.mark.mrml
def test_module_logic_refuses_a_curve_as_rv_insertion_before_the_child(mrml_scene, case, monkeypatch):
    """The ActivationMap module's Logic (scripted use: any node can be passed) refuses a curve by name, starts no
    child and adds no node."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from helpers import load_panel

    module = load_panel("ActivationMap", monkeypatch, mrml_scene)
    stack, good = case
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    curve = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "septum curve")
    for ras in ((10.0, 0.0, 0.0), (20.0, 5.0, 0.0)):
        curve.AddControlPoint(*ras)
    count = mrml_scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=r"^RV insertion 'septum curve': is a vtkMRMLMarkupsCurveNode, not a point"):
        module.ActivationMapLogic().run(labels, tos_file=str(good), rv_insertion=curve, wait=False)
    assert mrml_scene.GetNumberOfNodes() == count and curve.GetNumberOfControlPoints() == 2


def test_a_scar_segment_outside_1_17_is_refused_before_the_3d_work(case, tmp_path, capsys):
    """Was: ``--scar 18`` (or 0) was refused only when the segment table was made, after the 3D myocardium (with
    ``--method sadir`` seconds of network and fit, or a GPU job); now before any stage, in the library and the CLI."""
    from CardiacDiffusionLib.activation.pipeline import run_lma
    import SimpleITK as sitk

    from CardiacDiffusionLib.cli.main import main

    stack, good = case
    stages = []
    with pytest.raises(InputError, match=r"--scar: segments \[0, 18\] do not exist; give AHA segment numbers 1-17"):
        run_lma(stack, tos_csv=good, scar=[5, 18, 0], progress=lambda f, m: stages.append(m))
    assert not any("3D myocardium" in m for m in stages), stages
    sitk.WriteImage(stack.to_image(labels=True), str(tmp_path / "labels.nii.gz"))
    capsys.readouterr()
    assert main(["lma", "--slices", str(tmp_path / "labels.nii.gz"), "--tos-csv", str(good), "--scar", "18",
                 "--out", str(tmp_path / "out"), "--progress", "json"]) == 2  # fmt: skip
    said = capsys.readouterr()
    assert said.err.strip().splitlines() == ["error: --scar: segments [18] do not exist; give AHA segment numbers 1-17"]
    assert "3D myocardium" not in said.out, said.out
