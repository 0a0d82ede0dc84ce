"""The commands' newer refusals and warnings as a Slicer panel's user reads them: real jobs (child processes) on a
real slicer-core scene, their errors and warnings checked for the panel's words: node names and field labels, no
command-line option, no temporary path, no advice that is wrong inside Slicer (e.g. negating RAS by hand)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.slicer_adapter.process import ProcessFailed
from helpers import lbbb_stack_and_tos

pytestmark = pytest.mark.mrml


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(labelled SAX stack of 11 slices, 96 x 96 pixels of 2 mm, 10 mm apart; a TOS csv of an LBBB pattern)."""
    return lbbb_stack_and_tos(tmp_path_factory.mktemp("panel"))


def in_panel_terms(text: str, job) -> str:
    """``text``, after checking that it names no option and no temporary path."""
    assert "--" not in text, text
    assert "CardiacDiffusion-" not in text and str(job.folder) not in text, text
    assert not any(path.name in text for path in job.exported), text
    return text


def _state(scene) -> list:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def _ras_markup(scene, name: str, ras):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.AddControlPoint(*map(float, ras))
    return node


def _refused_in_panel(scene, labels, tos, **points) -> tuple[str, object]:
    """(the panel's words, the job) of an ActivationJob whose child refuses ``points``; nothing added to the scene."""
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob

    before = _state(scene)
    job = ActivationJob(scene, labels, tos_file=str(tos), **points)
    with pytest.raises(ProcessFailed) as refused:
        job.start().wait(timeout=120)
    assert _state(scene) == before  # nothing added
    return in_panel_terms(str(refused.value), job), job


# ---- ActivationMap ------------------------------------------------------------------------------------------------
def test_rv_insertion_outside_the_image_is_said_as_placed_in_ras(mrml_scene, case, tmp_path):
    """The command says a point outside the image in LPS with 'Slicer shows RAS: negate x and y'; the panel's user
    placed it in RAS and the panel converts it, so the job says the markup and its RAS position as placed."""
    from CardiacDiffusionLib.activation.pipeline import check_in_view
    from CardiacDiffusionLib.cli.lma import read_labelled_stack
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob

    stack, tos = case
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    mid = stack.n // 2
    centre = stack.origins[mid] + stack.row_dir * 48 * stack.pixel_spacing[0] + stack.col_dir * 48 * stack.pixel_spacing[1]
    ras_inside = centre * [-1, -1, 1]  # the image's centre as Slicer shows it
    ras_outside = (centre + 150.0 * stack.row_dir) * [-1, -1, 1]  # 75 columns beyond the middle of 96
    inside = _ras_markup(mrml_scene, "RV inside", ras_inside)
    outside = _ras_markup(mrml_scene, "RV outside", ras_outside)
    said, _ = _refused_in_panel(mrml_scene, labels, tos, rv_insertion=outside)
    where = ", ".join(f"{v:.1f}" for v in ras_outside)
    assert f"RV insertion 'RV outside' point 1 at RAS ({where}) mm: lies outside the SAX image (at column 123, row 48 " \
           "of a 96 x 96 image); place the anterior RV insertion on a slice of the SAX image" in said, said
    assert "LPS" not in said and "negate" not in said, said
    # the point placed inside, in RAS, reaches the command inside the image (the job converts RAS -> LPS itself)
    arguments = ActivationJob(mrml_scene, labels, tos_file=str(tos), rv_insertion=inside)._export(tmp_path)
    point = np.array(arguments[arguments.index("--rv-insertion") + 1].split(","), float)
    np.testing.assert_allclose(point, centre, atol=1e-6)
    check_in_view(read_labelled_stack(str(tmp_path / "sax_labels.nrrd"), None, "project"), point, "--rv-insertion")


def test_apex_outside_the_image_is_said_as_placed_in_ras(mrml_scene, case):
    """An LV apex point far beyond the stack: the command refuses it in LPS words; the panel says the markup as
    placed in RAS and what to do on the panel (no option, no LPS 'negate' advice)."""
    from CardiacDiffusionLib.slicer_adapter import mrml

    stack, tos = case
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    far = (stack.origins[-1] + 1000.0 * stack.normal) * [-1, -1, 1]  # 1 m beyond the last slice, in RAS
    apex = _ras_markup(mrml_scene, "Apex far", far)
    said, _ = _refused_in_panel(mrml_scene, labels, tos, apex=apex)
    where = ", ".join(f"{v:.1f}" for v in far)
    assert f"'Apex far' point 1 at RAS ({where}) mm: lies outside the SAX image" in said, said
    assert "give the LV apex (the tip of the LV) on the SAX image, or leave the LV apex point empty" in said, said
    assert "LPS" not in said and "negate" not in said, said


def test_sadir_spacing_beyond_the_commands_limit_is_refused_before_the_child(mrml_scene, case, tmp_path, capsys):
    """The panel offers 0.1-20 mm (shape takes them all); ``lma --method sadir`` takes up to 5 mm since it honours
    the spacing: the job refuses more in the panel's words before a child starts, at the command's own limit."""
    from CardiacDiffusionLib.cli.main import main
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob, sadir_max_spacing

    stack, tos = case
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    assert sadir_max_spacing() == 5.0
    for spacing in (8.0, 20.0, 5.01):
        with pytest.raises(InputError, match=rf"^Through-plane spacing {spacing:g} mm: the sadir Myocardium takes "
                                             r"0\.1 to 5 mm \(its model's grid is 1\.75 mm\); lower it, or choose shape$"):
            ActivationJob(mrml_scene, labels, tos_file=str(tos), method="sadir", spacing=spacing)
    ActivationJob(mrml_scene, labels, tos_file=str(tos), method="shape", spacing=20.0)  # shape: the panel's whole range
    job = ActivationJob(mrml_scene, labels, tos_file=str(tos), method="sadir", spacing=5.0)  # the limit itself: taken
    # the command refuses just above the job's limit, and its words read in the panel's terms too
    job.folder = tmp_path
    arguments = job._export(tmp_path)
    arguments[arguments.index("--spacing") + 1] = "5.5"
    assert main([job.command, *arguments, "--out", str(tmp_path / "out")]) == 2
    error = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error: ")][-1]
    said = in_panel_terms(job._in_module_terms(error), job)
    assert said == "error: Through-plane spacing 5.5: give the myocardium's through-plane spacing in mm, from 0.1 to 5 " \
                   "(default 1)", said
    assert not (tmp_path / "out").exists()


# ---- Reconstruction -----------------------------------------------------------------------------------------------
def test_an_output_grid_beyond_memory_is_refused_naming_the_panels_target_spacing(mrml_scene):
    """A 2048 x 2048 stack of two slices 150 mm apart at the panel's finest 0.1 mm: 1501 slices, 100 GB with shape.
    The child refuses it before allocating; the panel's user reads the Target spacing field to set."""
    from CardiacDiffusionLib.io.volumes import read_stack
    from CardiacDiffusionLib.reconstruction.volume import output_bytes
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob
    from CardiacDiffusionLib.utils.device import available_memory

    pixels = np.zeros((2, 2048, 2048), np.float32)
    pixels[:, 900:1100, 900:1100] = 100.0
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((0.2, 0.2, 150.0))
    node = mrml.volume_node_from_image(mrml_scene, image, "wide SAX")
    before = _state(mrml_scene)
    job = ReconstructionJob(mrml_scene, node, method="shape", spacing=0.1, keep_files=True)
    try:
        job.start()
        need = output_bytes(read_stack(str(job.folder / "sax.nrrd"), name="--sax"), 0.1, "shape")
        if (available_memory() or 0) > need:
            pytest.skip(f"this machine has more than the {need / 1e9:.0f} GB the grid needs")
        with pytest.raises(ProcessFailed) as refused:
            job.wait(timeout=120)
    finally:
        shutil.rmtree(job.folder, ignore_errors=True)
    said = in_panel_terms(str(refused.value), job)
    assert need == pytest.approx(1501 * 2048 * 2048 * 16, rel=1e-3)
    match = re.fullmatch(r"shape reconstruction failed with exit code 2: Target spacing 0\.1: 1501 output slices of 2048 x 2048 pixels over 150 mm would need "
                         r"(\d+\.?\d*) GB of memory \(shape, output and work\) and this machine has [\d.]+ GB available; "
                         r"set Target spacing to (\d\.\d{3}) mm or more \(default 1\)", said)  # fmt: skip
    assert match, said
    assert float(match[1]) == pytest.approx(need / 1e9, rel=1e-3)
    assert 0.1 < float(match[2]) <= 20.0  # within the panel's range
    assert _state(mrml_scene) == before


def _reconstructed(job) -> tuple:
    from CardiacDiffusionLib.slicer_adapter import mrml

    result = job.start().wait(timeout=180)
    assert result is not None, "the job did not finish in 180 s"
    for line in result.log + result.warnings:
        in_panel_terms(line, job)
    volume = mrml.image_from_volume_node(result.volume)
    segments = mrml.labels_from_segmentation(result.segmentation, volume)
    return result, volume, sitk.GetArrayFromImage(segments)


def test_a_volume_holding_its_slices_along_its_first_axis_is_reconstructed_as_the_same_stack(mrml_scene, case):
    """A SAX volume node whose slices lie along its I axis (as some converters save them) was read across its
    slices; now it is read along them, said in the panel's terms, and reconstructs to the very same volume and
    labels as the node saved slices-last (same grid in RAS)."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    stack = case[0]
    nodes = {}
    for name, order in (("slices last", (0, 1, 2)), ("slices first", (2, 0, 1))):
        image, labels = (sitk.PermuteAxes(stack.to_image(labels=b), order) for b in (False, True))
        nodes[name] = (mrml.volume_node_from_image(mrml_scene, image, f"SAX {name}"),
                       mrml.volume_node_from_image(mrml_scene, labels, f"labels {name}", labelmap=True))  # fmt: skip
    assert nodes["slices first"][0].GetImageData().GetDimensions() == (11, 96, 96)
    results = {name: _reconstructed(ReconstructionJob(mrml_scene, sax, labels, method="shape", spacing=2.0))
               for name, (sax, labels) in nodes.items()}  # fmt: skip
    (plain, image, labels), (permuted, image_p, labels_p) = results["slices last"], results["slices first"]
    assert plain.warnings == [] or not any("axis" in w for w in plain.warnings)
    assert "SAX volume: node 'SAX slices first' holds its slices along its first axis (10 mm apart), not its third: " \
           "read as a stack along that axis" in " ".join(permuted.warnings), permuted.warnings
    assert image_p.GetSize() == image.GetSize() == (96, 96, 51)  # 100 mm of slices every 2 mm
    np.testing.assert_allclose(image_p.GetOrigin(), image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image_p.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image_p), sitk.GetArrayFromImage(image))
    np.testing.assert_array_equal(labels_p, labels)
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_dmcvr_warnings_of_blank_and_unlabelled_slices_read_in_the_panels_terms(mrml_scene, case, one_torch_thread):
    """dmcvr (1 DDIM step) on a stack whose slice 3 is blank and whose slice 5 carries no labels: both warnings
    reach the panel's log and the result's warnings with the node's slice index, in the panel's terms."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    stack = case[0]
    labels = stack.labels.copy()
    labels[5] = 0
    image = stack.to_image()
    array = sitk.GetArrayFromImage(image)
    array[3] = 0
    blank = sitk.GetImageFromArray(array)
    blank.CopyInformation(image)
    sax = mrml.volume_node_from_image(mrml_scene, blank, "SAX gap")
    label_node = mrml.volume_node_from_image(mrml_scene, stack.with_labels(labels).to_image(labels=True),
                                             "labels gap", labelmap=True)  # fmt: skip
    reports = []
    job = ReconstructionJob(mrml_scene, sax, label_node, method="dmcvr", spacing=2.0, steps=1, device="cpu")
    result = job.start(lambda f, t: reports.append(t)).wait(timeout=300)
    assert result is not None
    for text in reports:
        in_panel_terms(text, job)
    at = stack.positions
    blank_said = (f"SAX volume: slice(s) 3 (0-based, at {at[3]:.1f} mm) hold a single value (no image: a padded or "
                  "missing slice): dmcvr does not look for the heart there")  # fmt: skip
    unlabelled_said = f"SAX volume: slice(s) 5 (0-based, at {at[5]:.1f} mm) carry no labels between labelled slices"
    for said in (blank_said, unlabelled_said):
        assert sum(w.startswith(said) for w in result.warnings) == 1, result.warnings
        assert any(line.startswith(f"warning: {said}") for line in result.log), result.log
    assert any(re.fullmatch(r"dmcvr: wrote .* to the module's temporary output folder", line) for line in result.log)
