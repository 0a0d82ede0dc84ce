"""The modules' jobs scripted as from Slicer's Python console, on real MRML and the shared real Sunnybrook case:
nodes of the wrong class, without voxels or given both as input and output are refused in the module's terms
before any work, and never changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.slicer_adapter import mrml
from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob
from CardiacDiffusionLib.slicer_adapter.job import write_label_node
from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob
from helpers import lbbb_stack_and_tos

pytestmark = pytest.mark.mrml
SUNNYBROOK = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook-SC-HF-I-1"
ACDC_065 = SUNNYBROOK.parent / "acdc" / "patient065_frame01.h5"
HEART_CT = SUNNYBROOK.parent / "totalseg-ct" / "heart.nii.gz"
needs_sunnybrook = pytest.mark.skipif(not (SUNNYBROOK / "dicom").is_dir(), reason="shared Sunnybrook DICOM missing")


@pytest.fixture(scope="module")
def sunnybrook():
    """The real SAX DICOM stack (12 oblique slices of 256 x 256) and its expert LV cavity labels, as images."""
    from CardiacDiffusionLib.io.contours import sunnybrook_labels
    from CardiacDiffusionLib.io.dicom import read_dicom_stack

    stack = read_dicom_stack(SUNNYBROOK / "dicom")
    image = stack.to_image()
    labels = sitk.GetImageFromArray(sunnybrook_labels(stack, SUNNYBROOK / "contours")[0].astype(np.uint8))
    labels.CopyInformation(image)
    return image, labels


def _voxels(node) -> np.ndarray:
    return vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).copy()


def _lv_centroid_ras(labels: sitk.Image) -> np.ndarray:
    index = np.argwhere(sitk.GetArrayFromImage(labels) == 1)[:, ::-1].mean(0)
    return mrml.LPS_TO_RAS @ np.array(labels.TransformContinuousIndexToPhysicalPoint(index.tolist()))


@needs_sunnybrook
def test_wrong_class_and_empty_nodes_are_refused_by_name(mrml_scene, sunnybrook, tmp_path):
    """Was: 'volume node ...: could not be written to /tmp/...' (a model as SAX volume), or the child's 'file not
    found: node ...' (a volume without voxels), or an AttributeError (a volume as RV insertion)."""
    image, labels = sunnybrook
    sax = mrml.volume_node_from_image(mrml_scene, image, "SB sax")
    label_node = mrml.volume_node_from_image(mrml_scene, labels, "SB labels", labelmap=True)
    model = mrml_scene.AddNewNodeByClass("vtkMRMLModelNode", "a model")
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "empty labels")
    count = mrml_scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=r"^node 'a model': is a vtkMRMLModelNode, not a volume; choose a volume node$"):
        ReconstructionJob(mrml_scene, model, label_node).start()
    with pytest.raises(InputError, match=r"^node 'empty labels': holds no image data"):
        ReconstructionJob(mrml_scene, sax, empty).start()
    _, tos = lbbb_stack_and_tos(tmp_path)
    with pytest.raises(InputError, match=r"^node 'empty labels': holds no image data"):
        ActivationJob(mrml_scene, empty, tos_file=str(tos)).start()
    with pytest.raises(InputError, match=r"^RV insertion 'SB sax': is a vtkMRMLScalarVolumeNode, not a point list"):
        ActivationJob(mrml_scene, label_node, tos_file=str(tos), rv_insertion=sax)
    with pytest.raises(InputError, match=r"^LV apex point 'a model': is a vtkMRMLModelNode, not a point list"):
        ActivationJob(mrml_scene, label_node, tos_file=str(tos), apex=model)
    empty_segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty seg")  # was: 'no reference geometry'
    with pytest.raises(InputError, match=r"^segmentation 'empty seg': no segment named like .* \(found \[\]\)"):
        ActivationJob(mrml_scene, empty_segmentation, tos_file=str(tos)).start()
    assert mrml_scene.GetNumberOfNodes() == count + 1  # the empty segmentation only


@needs_sunnybrook
def test_outputs_of_another_class_or_that_are_inputs_are_refused_before_the_run(mrml_scene, sunnybrook):
    """Was: the input labelmap given as output volume filled with the reconstruction, then an AttributeError; the SAX
    volume given as output volume overwritten. Under a linear transform the result lands where the data is shown."""
    image, labels = sunnybrook
    sax = mrml.volume_node_from_image(mrml_scene, image, "SB sax")
    label_node = mrml.volume_node_from_image(mrml_scene, labels, "SB labels", labelmap=True)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 50.0)
    matrix.SetElement(0, 0, np.cos(0.5)), matrix.SetElement(0, 1, -np.sin(0.5))
    matrix.SetElement(1, 0, np.sin(0.5)), matrix.SetElement(1, 1, np.cos(0.5))
    transform.SetMatrixTransformToParent(matrix)
    for node in (sax, label_node):
        node.SetAndObserveTransformNodeID(transform.GetID())
    before = {node.GetID(): _voxels(node) for node in (sax, label_node)}
    count = mrml_scene.GetNumberOfNodes()
    for options, said in [
        ({"output_volume": label_node}, "output volume 'SB labels': is a vtkMRMLLabelMapVolumeNode"),
        ({"output_segmentation": label_node}, "output segmentation 'SB labels': is a vtkMRMLLabelMapVolumeNode"),
        ({"output_volume": sax}, "output volume 'SB sax': is also an input of this shape reconstruction"),
    ]:  # fmt: skip
        job = ReconstructionJob(mrml_scene, sax, label_node, spacing=2.0, **options)
        with pytest.raises(InputError, match=f"^{said}"):
            job.start()
        assert job.child is None and not job.folder.exists()
    assert mrml_scene.GetNumberOfNodes() == count
    assert all(np.array_equal(before[n.GetID()], _voxels(n)) for n in (sax, label_node))

    output = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my output")
    result = ReconstructionJob(mrml_scene, sax, label_node, spacing=2.0, output_volume=output).start().wait()
    assert result.volume is output and output.GetParentTransformNode() is None
    assert all(np.array_equal(before[n.GetID()], _voxels(n)) for n in (sax, label_node))
    assert sax.GetTransformNodeID() == transform.GetID()
    shown = _lv_centroid_ras(mrml.image_from_volume_node(label_node))  # the labels as the views show them
    made = _lv_centroid_ras(mrml.labels_from_segmentation(result.segmentation, mrml.image_from_volume_node(output)))
    assert np.linalg.norm(shown - made) < 1.0, (shown, made)  # 0.34 mm measured: shape interpolation, 10 -> 2 mm


@pytest.mark.parametrize("node_class", ["vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode"])
def test_filling_a_given_node_checks_its_class_first(mrml_scene, node_class):
    """Was: AttributeError after the node's voxels were already replaced (a labelmap's display has no window/level)."""
    image = sitk.GetImageFromArray((np.arange(24, dtype=np.int16) % 4).reshape(2, 3, 4))  # labels 0-3
    node = mrml_scene.AddNewNodeByClass(node_class, "given")
    node.CreateDefaultDisplayNodes()
    if node_class == "vtkMRMLSegmentationNode":
        with pytest.raises(InputError, match=r"^node 'given': is a vtkMRMLSegmentationNode; give a scalar volume node"):
            mrml.volume_node_from_image(mrml_scene, image, node=node)
        return
    filled = mrml.volume_node_from_image(mrml_scene, image, node=node)
    assert filled is node and np.array_equal(_voxels(node), np.arange(24) % 4)
    with pytest.raises(InputError, match=r"^node 'given': is a vtkMRMLLabelMapVolumeNode; give a segmentation node"):
        mrml.segmentation_from_labels(mrml_scene, image, node=node)


def test_segment_names_and_colours_are_marked_as_chosen(mrml_scene):
    """Was: flagged auto-generated, so Slicer replaces the name and colour when a terminology is picked for the segment
    (as for a new, unnamed segment); Slicer's own importers clear both flags for names they set."""
    labels = sitk.GetImageFromArray(np.repeat(np.arange(4, dtype=np.uint8), 6).reshape(2, 3, 4))
    segmentation = mrml.segmentation_from_labels(mrml_scene, labels, surfaces=False).GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [s.GetName() for s in segments] == ["LV cavity", "LV myocardium", "RV cavity"]
    assert not any(s.GetNameAutoGenerated() or s.GetColorAutoGenerated() for s in segments)


@pytest.mark.skipif(not ACDC_065.is_file(), reason="shared ACDC data missing")
def test_a_segmentation_under_a_transform_is_written_where_it_is_shown(mrml_scene, tmp_path):
    """Was: written on its untransformed reference grid, so the segments (read in world) came out shifted: ACDC 065's
    labels moved 30 mm right and 7 mm up lost a slice of myocardium and the activation map refused its TOS slice 0."""
    from CardiacDiffusionLib.io.acdc import read_acdc

    labels = read_acdc(ACDC_065, spacing=(1.5, 10.0)).to_image(labels=True)
    label_node = mrml.volume_node_from_image(mrml_scene, labels, "labels", labelmap=True)
    segmentation = mrml.segmentation_from_labels(mrml_scene, labels, "segmentation", surfaces=False)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 30.0), matrix.SetElement(2, 3, 7.0)
    transform.SetMatrixTransformToParent(matrix)
    for node in (label_node, segmentation):
        node.SetAndObserveTransformNodeID(transform.GetID())
    shown = mrml.image_from_volume_node(label_node)
    written = sitk.ReadImage(str(write_label_node(segmentation, tmp_path / "labels.nrrd")))
    assert np.allclose(written.GetOrigin(), shown.GetOrigin()) and np.allclose(written.GetDirection(), shown.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(shown))  # 4 values, 8 slices


@needs_sunnybrook
@pytest.mark.skipif(not HEART_CT.is_file(), reason="shared CT heart mask missing")
def test_batch_input_the_command_refuses_is_exit_code_2_said_once(tmp_path):
    """Was: exit code 1 ('reconstruction failed') with the refusal printed twice, on stdout and stderr; the script's
    contract is one ``error:`` line and exit code 2 for bad input. Labels of another scan (the CT's heart mask)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "slicer_batch.py"
    command = [sys.executable, str(script), "--sax", str(SUNNYBROOK / "dicom"), "--sax-labels", str(HEART_CT),
               "--method", "linear", "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done
    assert "error" not in done.stdout
    said = done.stderr.splitlines()
    assert len(said) == 1 and said[0].startswith("error: ") and f"{HEART_CT} is not on the image's grid" in said[0], said
    assert not (tmp_path / "out").exists()
