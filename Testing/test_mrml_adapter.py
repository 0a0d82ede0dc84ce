"""The MRML adapter on real MRML (slicer-core), the child-process runner, and the Reconstruction job.

Tests marked ``mrml`` need slicer-core (skipped without it); the process tests run anywhere.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.geometry.planes import grid_points, plane_image
from CardiacDiffusionLib.geometry.stack import SliceStack
from CardiacDiffusionLib.labels import MR_LABEL_COLORS, MR_LABEL_DESCRIPTIONS, MR_LABELS
from CardiacDiffusionLib.reconstruction.lax_check import lax_dice_table
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.reconstruction.volume import reconstruct
from CardiacDiffusionLib.slicer_adapter.process import ChildProcess, ProcessFailed, parse_line
from helpers import load_panel

mrml_only = pytest.mark.mrml


# ---- data -------------------------------------------------------------------------------------
def _rotation(angles_deg) -> np.ndarray:
    a, b, c = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTION = _rotation([25.0, -40.0, 70.0])  # an oblique SAX orientation (columns: x, y, normal)
CENTER = np.array([12.0, -30.0, 45.0])  # heart centre, LPS mm


def heart_labels(points: np.ndarray) -> np.ndarray:
    """Analytic labels at LPS points: LV cavity and myocardium (ellipsoids), RV cavity beside them."""
    local = (points - CENTER) @ DIRECTION  # coordinates along the SAX x, y and normal axes
    x, y, z = local[..., 0], local[..., 1], local[..., 2]
    epi = (x / 20) ** 2 + (y / 20) ** 2 + (z / 30) ** 2
    endo = (x / 13) ** 2 + (y / 13) ** 2 + (z / 24) ** 2
    rv = ((x + 24) / 11) ** 2 + (y / 17) ** 2 + (z / 24) ** 2
    labels = np.zeros(x.shape, np.uint8)
    labels[rv < 1] = 3
    labels[epi < 1] = 2
    labels[endo < 1] = 1
    return labels


def sax_images(slices: int = 6, gap: float = 9.0, pixel: float = 1.8, size=(40, 36)) -> tuple[sitk.Image, sitk.Image]:
    """An oblique, anisotropic SAX stack (image, labels) through the analytic heart."""
    spacing = (pixel, pixel, gap)
    first = CENTER - DIRECTION @ (np.array([size[0] - 1, size[1] - 1, slices - 1]) * spacing / 2.0)
    labels = sitk.Image(size[0], size[1], slices, sitk.sitkUInt8)
    labels.SetSpacing(spacing)
    labels.SetOrigin(tuple(first.tolist()))
    labels.SetDirection(tuple(DIRECTION.flatten().tolist()))
    array = heart_labels(grid_points(labels)).reshape(slices, size[1], size[0])
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(labels)
    intensity = np.choose(array, [40.0, 300.0, 120.0, 280.0]).astype(np.float32)
    intensity += np.random.default_rng(0).normal(0, 5, intensity.shape).astype(np.float32)
    image = sitk.GetImageFromArray(intensity)
    image.CopyInformation(labels)
    return image, out


def lax_labels(pixel: float = 1.5, size=(48, 56)) -> sitk.Image:
    """A LAX plane through the heart's long axis (the SAX normal), labels from the same analytic heart."""
    # off-centre by odd amounts: no LAX pixel sits exactly between two volume voxels (ties)
    centre = CENTER + DIRECTION @ np.array([0.37, 0.23, 0.41])
    plane = plane_image(centre, DIRECTION[:, 0], DIRECTION[:, 2], size, (pixel, pixel), 6.0, sitk.sitkUInt8)
    image = sitk.GetImageFromArray(heart_labels(grid_points(plane)).reshape(1, size[1], size[0]))
    image.CopyInformation(plane)
    return image


def oblique_image(dtype=np.float32) -> sitk.Image:
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray((rng.normal(size=(5, 6, 7)) * 100).astype(dtype))
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((10.25, -20.5, 30.125))
    image.SetDirection(tuple(_rotation([20.0, -35.0, 60.0]).flatten().tolist()))
    return image


def assert_same_image(a: sitk.Image, b: sitk.Image, atol: float = 1e-9) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=atol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


# ---- volumes ----------------------------------------------------------------------------------
@mrml_only
@pytest.mark.parametrize("dtype,labelmap", [(np.float32, False), (np.int16, False), (np.uint8, True)])
def test_volume_round_trip_is_exact(mrml_scene, dtype, labelmap):
    from CardiacDiffusionLib.slicer_adapter import mrml

    image = oblique_image(dtype)
    node = mrml.volume_node_from_image(mrml_scene, image, "oblique", labelmap=labelmap)
    assert node.IsA("vtkMRMLLabelMapVolumeNode") == labelmap
    # MRML's own view of the geometry: RAS = diag(-1, -1, 1) LPS
    ras_origin = np.array(node.GetOrigin())
    np.testing.assert_allclose(ras_origin, [-10.25, 20.5, 30.125], atol=1e-12)
    np.testing.assert_allclose(node.GetSpacing(), (0.7, 0.9, 2.5), atol=1e-12)
    back = mrml.image_from_volume_node(node)
    assert back.GetPixelID() == image.GetPixelID()
    assert_same_image(back, image, atol=1e-12)


@mrml_only
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_volume_storage_node_round_trip(mrml_scene, tmp_path, suffix):
    from CardiacDiffusionLib.slicer_adapter import mrml

    image = oblique_image()
    node = mrml.volume_node_from_image(mrml_scene, image, "oblique")
    path = tmp_path / f"oblique{suffix}"
    mrml.save_volume(node, path)
    assert_same_image(sitk.ReadImage(str(path)), image, atol=1e-5)  # SimpleITK reads what MRML wrote
    loaded = mrml.load_volume(mrml_scene, path, "loaded")
    assert_same_image(mrml.image_from_volume_node(loaded), image, atol=1e-5)


@mrml_only
def test_parent_transform_is_applied_and_input_untouched(mrml_scene, tmp_path):
    from CardiacDiffusionLib.slicer_adapter import mrml

    image = oblique_image()
    node = mrml.volume_node_from_image(mrml_scene, image, "moved")
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift_ras = np.eye(4)
    shift_ras[:3, 3] = [5.0, -7.0, 3.0]
    transform.SetMatrixTransformToParent(mrml._vtk_matrix(shift_ras))
    node.SetAndObserveTransformNodeID(transform.GetID())
    before = (node.GetMTime(), node.GetImageData().GetMTime(), node.GetOrigin())

    world = mrml.image_from_volume_node(node)
    np.testing.assert_allclose(np.array(world.GetOrigin()) - image.GetOrigin(), [-5.0, 7.0, 3.0], atol=1e-9)
    mrml.save_volume(node, tmp_path / "moved.nrrd")  # writes a hardened copy
    np.testing.assert_allclose(sitk.ReadImage(str(tmp_path / "moved.nrrd")).GetOrigin(), world.GetOrigin(), atol=1e-5)
    assert (node.GetMTime(), node.GetImageData().GetMTime(), node.GetOrigin()) == before


# ---- segmentations ----------------------------------------------------------------------------
@mrml_only
def test_labels_to_segmentation_named_coloured_with_surfaces(mrml_scene):
    import vtk

    from CardiacDiffusionLib.slicer_adapter import mrml

    image, labels = sax_images(slices=12, gap=3.0)
    seg = mrml.segmentation_from_labels(mrml_scene, labels, "heart")
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    volumes = {}
    for i in range(3):
        segment = segmentation.GetNthSegment(i)
        short = MR_LABELS[segment.GetLabelValue()]
        assert segment.GetName() == MR_LABEL_DESCRIPTIONS[short]
        np.testing.assert_allclose(segment.GetColor(), MR_LABEL_COLORS[short])
        surface = vtk.vtkPolyData()
        assert seg.GetClosedSurfaceRepresentation(segmentation.GetNthSegmentID(i), surface)
        assert surface.GetNumberOfPoints() > 100, short
        mass = vtk.vtkMassProperties()
        mass.SetInputData(surface)
        mass.Update()
        volumes[short] = mass.GetVolume()
    # each surface encloses about the volume its label holds (the smoothing shaves the staircase)
    voxel_ml = np.prod(labels.GetSpacing())
    counts = {MR_LABELS[v]: int((sitk.GetArrayFromImage(labels) == v).sum()) for v in MR_LABELS}
    for short, volume in volumes.items():
        assert abs(volume - counts[short] * voxel_ml) < 0.1 * counts[short] * voxel_ml, short


@mrml_only
def test_segmentation_to_labels_round_trip(mrml_scene):
    from CardiacDiffusionLib.slicer_adapter import mrml

    _, labels = sax_images()
    seg = mrml.segmentation_from_labels(mrml_scene, labels, "heart", surfaces=False)
    back = mrml.labels_from_segmentation(seg, labels)
    assert_same_image(back, labels)
    # on a finer reference grid (voxel centres a quarter voxel off: no nearest-neighbour ties) the
    # labels are found at the same physical places
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    origin = np.array(labels.GetOrigin()) - direction @ (np.array(labels.GetSpacing()) / 4)
    fine = sitk.Resample(labels, [s * 2 for s in labels.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                         origin.tolist(), [s / 2 for s in labels.GetSpacing()], labels.GetDirection())  # fmt: skip
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(mrml.labels_from_segmentation(seg, fine)), sitk.GetArrayFromImage(fine)
    )


@mrml_only
def test_surface_only_segmentation_is_converted_on_a_copy(mrml_scene):
    from CardiacDiffusionLib.slicer_adapter import mrml

    _, labels = sax_images(slices=14, gap=2.5)
    seg = mrml.segmentation_from_labels(mrml_scene, labels, "heart")
    # keep only the closed surfaces, as for a segmentation imported from models
    segmentation = seg.GetSegmentation()
    segmentation.SetSourceRepresentationName(mrml.CLOSED_SURFACE)
    segmentation.RemoveRepresentation(mrml.BINARY_LABELMAP)
    assert not segmentation.ContainsRepresentation(mrml.BINARY_LABELMAP)
    back = sitk.GetArrayFromImage(mrml.labels_from_segmentation(seg, labels))
    truth = sitk.GetArrayFromImage(labels)
    for value in MR_LABELS:
        a, b = back == value, truth == value
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.85, (value, dice)
    assert not segmentation.ContainsRepresentation(mrml.BINARY_LABELMAP)  # input not modified


@mrml_only
def test_segments_are_matched_by_name(mrml_scene):
    from CardiacDiffusionLib.slicer_adapter import mrml

    _, labels = sax_images()
    seg = mrml.segmentation_from_labels(mrml_scene, labels, "heart", surfaces=False)
    segmentation = seg.GetSegmentation()
    lv = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("LV cavity"))
    lv.SetName("lv")  # short names in any case count too
    back = sitk.GetArrayFromImage(mrml.labels_from_segmentation(seg, labels))
    np.testing.assert_array_equal(back, sitk.GetArrayFromImage(labels))
    for i in range(segmentation.GetNumberOfSegments()):
        segmentation.GetNthSegment(i).SetName(f"Segment_{i + 1}")
    with pytest.raises(InputError, match="no segment named like"):
        mrml.labels_from_segmentation(seg, labels)


@mrml_only
def test_lax_segmentation_keeps_its_plane_geometry(mrml_scene):
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.job import reference_image_of_segmentation

    lax = lax_labels()
    seg = mrml.segmentation_from_labels(mrml_scene, lax, "4ch", surfaces=False)
    reference = reference_image_of_segmentation(seg)
    assert reference.GetSize() == lax.GetSize()
    np.testing.assert_allclose(reference.GetOrigin(), lax.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(reference.GetSpacing(), lax.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(reference.GetDirection(), lax.GetDirection(), atol=1e-6)
    assert_same_image(mrml.labels_from_segmentation(seg, reference), lax, atol=1e-6)


# ---- models, tables, markups ------------------------------------------------------------------
@mrml_only
def test_model_scalars_with_colour_table_and_fallback(mrml_scene):
    import vtk

    from CardiacDiffusionLib.slicer_adapter import mrml

    sphere = vtk.vtkSphereSource()
    sphere.SetThetaResolution(16)
    sphere.SetPhiResolution(12)
    sphere.Update()
    polydata = sphere.GetOutput()
    values = vtk.vtkDoubleArray()
    values.SetName("activation_ms")
    for i in range(polydata.GetNumberOfPoints()):
        values.InsertNextValue(10.0 * polydata.GetPoint(i)[2])
    polydata.GetPointData().AddArray(values)
    points_before = polydata.GetNumberOfPoints()

    node = mrml.model_from_polydata(mrml_scene, polydata, "LMA", scalars="activation_ms")
    display = node.GetDisplayNode()
    assert display.GetActiveScalarName() == "activation_ms"
    assert display.GetScalarVisibility()
    array = node.GetPolyData().GetPointData().GetArray("activation_ms")
    assert array.GetNumberOfTuples() == points_before
    np.testing.assert_allclose(array.GetRange(), values.GetRange())
    color = mrml_scene.GetNodeByID(display.GetColorNodeID())
    assert color is not None  # file-based viridis is missing in slicer-core: a built-in table was used
    assert display.GetColorNodeID() in mrml.DEFAULT_SCALAR_COLORS
    # without any default colour table our own viridis is created
    bare = __import__("slicer").vtkMRMLScene()
    own = mrml.model_from_polydata(bare, polydata, "LMA", scalars="activation_ms")
    table = bare.GetNodeByID(own.GetDisplayNode().GetColorNodeID())
    assert table.GetName() == "CardiacDiffusion viridis" and table.GetNumberOfColors() == 256
    assert node.GetPolyData() is not polydata and polydata.GetNumberOfPoints() == points_before


@mrml_only
def test_table_from_dict(mrml_scene):
    from CardiacDiffusionLib.slicer_adapter import mrml

    rows = {"shape": {"LV": 0.91, "MYO": 0.8, "RV": None}, "linear": {"LV": 0.85, "MYO": 0.7, "RV": 0.66}}
    node = mrml.table_from_dict(mrml_scene, rows, "LAX Dice", row_header="method")
    table = node.GetTable()
    assert (table.GetNumberOfRows(), table.GetNumberOfColumns()) == (2, 4)
    assert [table.GetColumnName(c) for c in range(4)] == ["method", "LV", "MYO", "RV"]
    assert table.GetValue(1, 0).ToString() == "linear"
    assert table.GetValue(0, 1).ToDouble() == pytest.approx(0.91)
    assert mrml.dict_from_table(node) == rows


@mrml_only
def test_markups_to_lps_points(mrml_scene):
    from CardiacDiffusionLib.slicer_adapter import mrml

    node = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "RV insertion")
    node.AddControlPoint(10.0, 20.0, 30.0)  # RAS
    node.AddControlPoint(-4.5, 0.0, 7.25)
    np.testing.assert_allclose(mrml.points_from_markups(node), [[-10, -20, 30], [4.5, 0, 7.25]])
    lps = np.array([[1.0, 2.0, 3.0], [-5.0, 6.0, -7.0]])
    back = mrml.points_from_markups(mrml.markups_from_points(mrml_scene, lps, "points", ["anterior", "inferior"]))
    np.testing.assert_allclose(back, lps)


# ---- child process ----------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_parse_line():
    message = parse_line('{"event": "progress", "progress": 0.5, "message": "half"}\n')
    assert (message.kind, message.progress, message.text) == ("progress", 0.5, "half")
    assert parse_line("{not json}").kind == "log"
    assert parse_line('{"a": 1}').kind == "log"  # JSON without an event is just printed output
    assert parse_line('{"event": "progress", "progress": 1}', "stderr").kind == "stderr"


def test_child_progress_lines_and_log():
    script = (
        "import json, sys\n"
        "for i in range(1, 4):\n"
        "    print(json.dumps({'event': 'progress', 'progress': i / 4, 'message': f'step {i}'}), flush=True)\n"
        "print('plain log line')\n"
        "print('warning: on stderr', file=sys.stderr)\n"
    )
    child = ChildProcess([sys.executable, "-c", script], name="printer")
    messages = []
    assert child.wait(timeout=30, callback=messages.append) == 0
    child.check()
    progress = [m.progress for m in messages if m.kind == "progress"]
    assert progress == [0.25, 0.5, 0.75]
    assert [m.text for m in messages if m.kind == "progress"] == ["step 1", "step 2", "step 3"]
    assert [m.text for m in messages if m.kind == "log"] == ["plain log line"]
    assert child.stderr_tail == ["warning: on stderr"]


def test_cancel_kills_child_and_grandchild():
    script = (
        "import json, subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(json.dumps({'event': 'started', 'grandchild': g.pid}), flush=True)\n"
        "time.sleep(120)\n"
    )
    child = ChildProcess([sys.executable, "-c", script], name="sleeper")
    deadline = time.monotonic() + 30
    grandchild = None
    while grandchild is None and time.monotonic() < deadline:
        for message in child.poll():
            if message.kind == "started":
                grandchild = message.data["grandchild"]
        time.sleep(0.02)
    assert grandchild is not None and _alive(child.pid) and _alive(grandchild)
    start = time.monotonic()
    child.cancel()
    assert time.monotonic() - start < 3.0  # SIGTERM suffices: no wait for the kill grace period
    assert child.cancelled and child.returncode is not None and child.finished
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child.pid) and not _alive(grandchild)
    child.check()  # a cancelled child is not a failure


def test_failing_child_reports_its_last_error_line():
    script = "import sys\nprint('working')\nprint('error: --sax: not a SAX stack', file=sys.stderr)\nsys.exit(2)\n"
    child = ChildProcess([sys.executable, "-c", script], name="reconstruction")
    assert child.wait(timeout=30) == 2
    with pytest.raises(ProcessFailed, match=r"reconstruction failed with exit code 2: --sax: not a SAX stack$"):
        child.check()


# ---- the Reconstruction module's logic without Qt -----------------------------------------------
def _cli_available() -> bool:
    try:
        from CardiacDiffusionLib.cli.main import build_parser

        build_parser()
    except ImportError:
        return False
    return True


needs_cli = pytest.mark.skipif(not _cli_available(), reason="the cardiac-diffusion CLI does not import yet")


@mrml_only
@needs_cli
def test_reconstruction_job_loads_new_nodes(mrml_scene):
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    image, labels = sax_images()
    lax = lax_labels()
    sax_node = mrml.volume_node_from_image(mrml_scene, image, "SAX")
    label_node = mrml.segmentation_from_labels(mrml_scene, labels, "SAX labels", surfaces=False)
    lax_node = mrml.volume_node_from_image(mrml_scene, lax, "4ch", labelmap=True)
    inputs = [sax_node, label_node, lax_node]
    before = [(n.GetMTime(), n.GetID()) for n in inputs]
    sax_array = sitk.GetArrayFromImage(mrml.image_from_volume_node(sax_node))
    nodes_before = mrml_scene.GetNumberOfNodes()

    reports = []
    job = ReconstructionJob(mrml_scene, sax_node, label_node, [lax_node], method="shape", spacing=1.5)
    job.start(lambda fraction, text: reports.append((fraction, text)))
    result = job.wait(timeout=120)
    assert result is not None

    # the same computation in-process gives the same volumes and table
    expected = reconstruct(SliceStack.from_image(image, labels), "shape", 1.5)
    volume = mrml.image_from_volume_node(result.volume)
    np.testing.assert_allclose(volume.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(volume.GetSpacing(), image.GetSpacing()[:2] + (1.5,), atol=1e-5)
    assert volume.GetSize() == expected.image.GetSize() and volume.GetSize()[2] == 31  # 45 mm / 1.5 + 1
    np.testing.assert_allclose(sitk.GetArrayFromImage(volume), sitk.GetArrayFromImage(expected.image), atol=1e-4)
    out_labels = mrml.labels_from_segmentation(result.segmentation, volume)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out_labels), sitk.GetArrayFromImage(expected.labels))
    names = {result.segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)}
    assert names == set(MR_LABEL_DESCRIPTIONS.values())
    assert result.segmentation.GetSegmentation().ContainsRepresentation(mrml.CLOSED_SURFACE)

    want = lax_dice_table(expected.labels, {"4ch": lax})["4ch"]
    assert result.lax_dice == {"4ch": want}
    assert mrml.dict_from_table(result.table) == {"4ch": want}
    assert want["LV"] > 0.85 and want["MYO"] > 0.6  # the analytic heart is reconstructed, not noise
    assert result.warnings == []  # LAX and SAX labels from one heart agree where the planes cross
    # new nodes only; inputs untouched; progress reached 100 %
    assert mrml_scene.GetNumberOfNodes() > nodes_before
    assert [(n.GetMTime(), n.GetID()) for n in inputs] == before
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(sax_node)), sax_array)
    assert reports[-1] == (1.0, "done")
    assert not job.folder.exists()


@mrml_only
def test_reconstruction_job_passes_the_shape_prior_to_dmcvr_only(mrml_scene, tmp_path):
    from CardiacDiffusionLib.cli.main import build_parser
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    sax_node = mrml.volume_node_from_image(mrml_scene, sax_images()[0], "SAX")
    args = {}
    for method, prior in (("dmcvr", 0.0), ("dmcvr", None), ("shape", 0.7)):
        (tmp_path / f"{method}{prior}").mkdir()
        job = ReconstructionJob(mrml_scene, sax_node, method=method, shape_prior=prior)
        args[method, prior] = job._export(tmp_path / f"{method}{prior}")
    assert args["dmcvr", 0.0][-2:] == ["--shape-prior", "0.0"]  # 0 (network labels alone) is not "unset"
    assert "--shape-prior" not in args["dmcvr", None] and "--shape-prior" not in args["shape", 0.7]
    parsed = build_parser().parse_args(["reconstruct", *args["dmcvr", 0.0], "--out", str(tmp_path / "out")])
    assert parsed.shape_prior == 0.0 and parsed.method == "dmcvr"  # the CLI reads what the job writes
    for bad in (1.5, 1.0, -0.1):  # dmcvr() refuses w = 1 (the prior alone): said before the child starts
        with pytest.raises(InputError, match="shape prior weight must be in \\[0, 1\\)"):
            ReconstructionJob(mrml_scene, sax_node, method="dmcvr", shape_prior=bad)


@mrml_only
@needs_cli
def test_reconstruction_job_passes_the_dmcvr_model(mrml_scene, tmp_path):
    """The module's DMCVR model field reaches the child (an unknown name is its one-line error, the scene
    unchanged); other methods do not take it."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    sax_node = mrml.volume_node_from_image(mrml_scene, sax_images()[0], "SAX")
    assert "--model" not in ReconstructionJob(mrml_scene, sax_node, method="shape", model="x")._export(tmp_path)
    assert "--model" not in ReconstructionJob(mrml_scene, sax_node, method="dmcvr", model=" ")._export(tmp_path)
    nodes_before = mrml_scene.GetNumberOfNodes()
    job = ReconstructionJob(mrml_scene, sax_node, method="dmcvr", model="no-such-dmcvr-model").start()
    with pytest.raises(ProcessFailed, match="model 'no-such-dmcvr-model': not registered"):
        job.wait(timeout=120)
    assert mrml_scene.GetNumberOfNodes() == nodes_before and not job.folder.exists()


@mrml_only
@needs_cli
def test_reconstruction_job_failure_leaves_scene(mrml_scene):
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    image, _ = sax_images(slices=1)
    sax_node = mrml.volume_node_from_image(mrml_scene, image, "one slice")
    nodes_before = mrml_scene.GetNumberOfNodes()
    job = ReconstructionJob(mrml_scene, sax_node, method="linear").start()
    with pytest.raises(ProcessFailed, match="needs at least 2 parallel slices") as failed:
        job.wait(timeout=120)
    assert mrml_scene.GetNumberOfNodes() == nodes_before
    assert not job.folder.exists()
    # the message names the node, not the temporary file it was written to for the child
    assert "node 'one slice'" in str(failed.value) and str(job.folder) not in str(failed.value)


@mrml_only
@needs_cli
def test_acdc_numbered_labelmap_is_read_with_the_module_option(mrml_scene):
    """A labelmap volume in ACDC numbering (1 RV, 3 LV cavity): refused by default with advice a module's user
    can follow (not the command's --label-convention), converted on export with label_numbering="acdc" and then
    reconstructed as the project-numbered labels are; the input node is left as it was."""
    from CardiacDiffusionLib.labels import convert_labels
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    image, labels = sax_images()
    acdc = sitk.GetImageFromArray(convert_labels(sitk.GetArrayFromImage(labels), "project", "acdc"))
    acdc.CopyInformation(labels)
    sax_node = mrml.volume_node_from_image(mrml_scene, image, "SAX")
    label_node = mrml.volume_node_from_image(mrml_scene, acdc, "ACDC labels", labelmap=True)
    stored = sitk.GetArrayFromImage(mrml.image_from_volume_node(label_node))
    job = ReconstructionJob(mrml_scene, sax_node, label_node, method="shape", spacing=1.5).start()
    with pytest.raises(ProcessFailed, match="look like ACDC numbering") as failed:
        job.wait(timeout=120)
    message = str(failed.value)
    assert "node 'ACDC labels'" in message and "set the module's Label numbering to ACDC" in message
    assert "--label-convention" not in message
    result = ReconstructionJob(mrml_scene, sax_node, label_node, method="shape", spacing=1.5,
                               label_numbering="acdc").start().wait(timeout=120)  # fmt: skip
    expected = reconstruct(SliceStack.from_image(image, labels), "shape", 1.5).labels
    got = mrml.labels_from_segmentation(result.segmentation, mrml.image_from_volume_node(result.volume))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(expected))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(label_node)), stored)
    with pytest.raises(InputError, match="label numbering 'ukbb' is unknown"):
        ReconstructionJob(mrml_scene, sax_node, label_node, label_numbering="ukbb")


@mrml_only
@needs_cli
def test_reconstruction_result_carries_the_warnings(mrml_scene):
    """What the command warns about (here: an MR phantom's slices stored in reverse order against the volume's
    geometry) reaches the result (``.warnings``, shown in the module's log), not only the child's console."""
    from CardiacDiffusionLib.phantoms.mr import MRPhantom
    from CardiacDiffusionLib.phantoms.scanner import acquire_sax
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    stack = acquire_sax(MRPhantom(3, "ED"), matrix=64, pixel_mm=3.0)
    nodes = []
    for labels in (False, True):
        image = stack.to_image(labels=labels)
        flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[::-1].copy())
        flipped.CopyInformation(image)
        nodes.append(mrml.volume_node_from_image(mrml_scene, flipped, f"reversed {labels}", labelmap=labels))
    as_scanned = mrml.volume_node_from_image(mrml_scene, stack.to_image(), "as scanned")
    result = ReconstructionJob(mrml_scene, *nodes, method="shape").start().wait(timeout=120)
    assert [w for w in result.warnings if "reverse order" in w] and not any("/" in w for w in result.warnings)
    assert ReconstructionJob(mrml_scene, as_scanned, method="shape").start().wait(timeout=120).warnings == []
    # LAX labels of another phase (end-systolic, the stack end-diastolic): warned about by node name
    from CardiacDiffusionLib.phantoms.scanner import acquire_lax

    es_labels = acquire_lax(MRPhantom(3, "ES"), "4ch", pixel_mm=3.0, matrix=64)[1]
    es = mrml.volume_node_from_image(mrml_scene, es_labels, "4ch ES", labelmap=True)
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "labels", labelmap=True)
    said = ReconstructionJob(mrml_scene, as_scanned, labels, [es], method="shape").start().wait(timeout=120).warnings
    assert len(said) == 1 and said[0].startswith("node '4ch ES': its labels and the SAX labels disagree"), said


@mrml_only
def test_reconstruction_job_cancel_leaves_scene(mrml_scene, tmp_path, monkeypatch):
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    # a stand-in CLI that reports progress and then works for a long time
    (tmp_path / "slow_cli.py").write_text(
        "import json, sys, time\n"
        "assert sys.argv[1] == 'reconstruct' and '--sax' in sys.argv\n"
        "print(json.dumps({'event': 'progress', 'progress': 0.5, 'message': 'half way'}), flush=True)\n"
        "time.sleep(120)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    image, labels = sax_images()
    sax_node = mrml.volume_node_from_image(mrml_scene, image, "SAX")
    label_node = mrml.volume_node_from_image(mrml_scene, labels, "SAX labels", labelmap=True)
    nodes_before = mrml_scene.GetNumberOfNodes()
    reports = []
    job = ReconstructionJob(mrml_scene, sax_node, label_node, method="shape")
    job.cli_module = "slow_cli"
    job.start(lambda fraction, text: reports.append((fraction, text)))
    assert sorted(p.name for p in job.folder.iterdir()) == ["sax.nrrd", "sax_labels.nrrd"]
    deadline = time.monotonic() + 30
    while not any(text == "half way" for _, text in reports) and time.monotonic() < deadline:
        assert not job.poll()
        time.sleep(0.05)
    assert (0.05 + 0.85 * 0.5, "half way") in reports
    pid = job.child.pid
    job.cancel()
    assert not _alive(pid)
    assert mrml_scene.GetNumberOfNodes() == nodes_before
    assert not job.folder.exists()
    assert reports[-1] == (None, "cancelled")


@mrml_only
def test_reconstruction_job_that_fails_to_load_leaves_scene(mrml_scene, tmp_path, monkeypatch):
    """A result that fails half-way through loading (here the label file is corrupt, after the volume was added)
    is taken out again; and cancelling a job whose child already exited says so instead of losing its files."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    (tmp_path / "broken_cli.py").write_text(
        "import sys, pathlib, SimpleITK as sitk\n"
        "out = pathlib.Path(sys.argv[sys.argv.index('--out') + 1]); out.mkdir()\n"
        "sitk.WriteImage(sitk.ReadImage(sys.argv[sys.argv.index('--sax') + 1]), str(out / 'reconstruction_image.nii.gz'))\n"
        "(out / 'reconstruction_labels.nii.gz').write_bytes(b'not a NIfTI file')\n"
        "(out / 'geometry.json').write_text('{}')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    image, _ = sax_images()
    sax_node = mrml.volume_node_from_image(mrml_scene, image, "SAX")
    nodes_before = mrml_scene.GetNumberOfNodes()
    job = ReconstructionJob(mrml_scene, sax_node, method="shape")
    job.cli_module = "broken_cli"
    with pytest.raises(RuntimeError):
        job.start().wait(timeout=60)
    assert mrml_scene.GetNumberOfNodes() == nodes_before and not job.folder.exists()
    job = ReconstructionJob(mrml_scene, sax_node, method="shape")
    job.cli_module = "broken_cli"
    job.start()
    job.child.wait(60, lambda message: None)  # the child is done, its outputs not loaded yet
    job.cancel()
    with pytest.raises(InputError, match="cancelled"):
        job.wait(timeout=10)
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def test_sax_images_are_what_the_tests_assume():
    image, labels = sax_images()
    array = sitk.GetArrayFromImage(labels)
    assert set(np.unique(array)) == {0, 1, 2, 3}
    stack = SliceStack.from_image(image, labels)
    assert stack.is_uniform() and not stack.has_shifts()
    np.testing.assert_allclose(stack.normal, DIRECTION[:, 2], atol=1e-12)
    assert json.dumps(stack.geometry_report())  # plain JSON


# ---- the Slicer module file itself, on slicer-core with Qt-side stubs -----------------------------


@mrml_only
@needs_cli
def test_module_self_test_runs_on_slicer_core(mrml_scene, monkeypatch):
    module = load_panel("Reconstruction", monkeypatch, mrml_scene)
    assert module.ReconstructionLogic().ensureDependencies(ask=False)  # nothing to install here
    result = module.ReconstructionTest("runTest").run()
    assert result.wasSuccessful(), [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1 and not result.skipped


def child_error_in_panel_terms(job, arguments, capsys) -> str:
    """The ``error:`` line the job's child prints for ``arguments`` (the CLI's ``main`` run here, on the files the
    job exported under ``job.folder``), as the panel shows it; asserted free of command-line options (outside a
    quoted terminal command) and of the job's temporary paths."""
    from CardiacDiffusionLib.cli.main import main
    from CardiacDiffusionLib.slicer_adapter.job import TERMINAL_COMMAND

    assert main([job.command, *arguments, "--out", str(job.folder / "out")]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")][-1]
    said = job._in_module_terms(error)
    assert "--" not in TERMINAL_COMMAND.sub("", said), said
    assert str(job.folder) not in said and not any(path.name in said for path in job.exported), said
    return said


@mrml_only
@needs_cli
def test_reconstruction_refusals_read_in_the_panels_terms(mrml_scene, tmp_path, capsys):
    """Real refusals of ``reconstruct`` for what a Reconstruction panel user can choose, through the job's
    translation: the panel's node names and field labels, no option, no temporary file."""
    from CardiacDiffusionLib.labels import convert_labels
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    image, labels = sax_images()
    short_image, _ = sax_images(slices=3)
    array = sitk.GetArrayFromImage(labels)

    def labelmap(values, name):
        out = sitk.GetImageFromArray(values.astype(np.uint8))
        out.CopyInformation(labels)
        return mrml.volume_node_from_image(mrml_scene, out, name, labelmap=True)

    far = lax_labels()
    far.SetOrigin(tuple(np.array(far.GetOrigin()) + 500.0))
    sax = mrml.volume_node_from_image(mrml_scene, image, "SAX cine")
    cases = [  # (job options, what the panel user reads)
        ({"sax_volume": mrml.volume_node_from_image(mrml_scene, sax_images(slices=1)[0], "one slice")},
         "SAX volume: node 'one slice' holds 1 slice"),
        ({"sax_labels": labelmap(0 * array, "empty")}, "SAX labels node 'empty': no slice holds a label"),
        ({"sax_labels": labelmap(np.where(array == 3, 7, array), "seven")}, "set the module's Label numbering to ACDC"),
        ({"sax_labels": labelmap(convert_labels(array, "project", "acdc"), "acdc")},
         "set the module's Label numbering to ACDC"),
        ({"lax_label_nodes": [mrml.volume_node_from_image(mrml_scene, far, "4ch far", labelmap=True)]},
         "LAX labels node '4ch far': the LAX plane does not intersect the SAX volume"),
        ({"sax_volume": mrml.volume_node_from_image(mrml_scene, short_image, "short"), "spacing": 20.0},
         "Target spacing 20.0 mm: larger than the stack's extent"),
        ({"method": "dmcvr", "model": "no-such-dmcvr-model"}, "model 'no-such-dmcvr-model': not registered"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(({"method": "dmcvr", "device": "cuda"}, "set Device to cpu"))
    for index, (options, expected) in enumerate(cases):
        job = ReconstructionJob(mrml_scene, **{"sax_volume": sax, "method": "shape", **options})
        job.folder = tmp_path / f"CardiacDiffusion-reconstruct-{index}"
        job.folder.mkdir()
        said = child_error_in_panel_terms(job, job._export(job.folder), capsys)
        assert expected in said, said
    with pytest.raises(InputError, match="DDIM steps must be at least 1"):  # said before the child starts
        ReconstructionJob(mrml_scene, sax, method="dmcvr", steps=-3)
    assert "--steps" not in ReconstructionJob(mrml_scene, sax, method="shape", steps=10)._export(tmp_path)
