"""The ActivationMap module's job on real MRML (slicer-core): an MR phantom stack with a known TOS table.

The child's outputs are compared with ``run_lma`` run in this process on the very files the job wrote.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.activation.pipeline import run_lma
from CardiacDiffusionLib.activation.sectors import lv_frame
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.phantoms.activation import ActivationPhantom
from CardiacDiffusionLib.slicer_adapter.process import ProcessFailed
from helpers import lbbb_stack_and_tos, load_panel

pytestmark = pytest.mark.mrml


@pytest.fixture
def lma_cli(tmp_path, monkeypatch) -> str:
    """The CLI module the job runs: the real one once it registers ``lma``, else main() with it added."""
    from CardiacDiffusionLib.cli import main as cli

    if "lma" in cli.COMMAND_MODULES:
        return "CardiacDiffusionLib.cli.main"
    (tmp_path / "cli_with_lma.py").write_text(
        "import sys\n"
        "from CardiacDiffusionLib.cli import main as cli\n"
        "cli.COMMAND_MODULES = (*cli.COMMAND_MODULES, 'lma')\n"
        "sys.exit(cli.main())\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "cli_with_lma"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(labelled SAX stack, TOS csv of an LBBB pattern on its LV frame, a bad csv)."""
    folder = tmp_path_factory.mktemp("lma")
    stack, good = lbbb_stack_and_tos(folder)
    bad = folder / "bad.csv"
    bad.write_text("slice,sector,tos_ms\n" + "".join(f"1,{s},{400 if s == 3 else 50}\n" for s in range(1, 19)))
    return stack, good, bad


def _state(node) -> tuple:
    from vtk.util.numpy_support import vtk_to_numpy

    voxels = vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).copy()
    return node.GetMTime(), node.GetImageData().GetMTime(), voxels.tobytes()


def test_activation_job_loads_model_bullseye_and_table(mrml_scene, case, lma_cli, tmp_path):
    import slicer
    from vtk.util.numpy_support import vtk_to_numpy

    from CardiacDiffusionLib.activation.mapping import TOS_ARRAY, mesh_points
    from CardiacDiffusionLib.cli.lma import read_labelled_stack
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob

    colors = slicer.vtkSlicerColorLogic()  # what the Colors module registers in Slicer (legend nodes)
    colors.SetMRMLScene(mrml_scene)
    stack, good, _ = case
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    before, nodes_before = _state(labels), mrml_scene.GetNumberOfNodes()
    reports = []
    job = ActivationJob(mrml_scene, labels, tos_file=str(good), keep_files=True)
    job.cli_module = lma_cli
    try:
        result = job.start(lambda f, t: reports.append((f, t))).wait(timeout=180)
        expected = run_lma(read_labelled_stack(str(job.folder / "sax_labels.nrrd"), None, "project"), tos_csv=good)
    finally:
        shutil.rmtree(job.folder, ignore_errors=True)

    # the model: the same surface (LPS -> RAS) with the same TOS on it, shown with a colour legend
    polydata = result.model.GetPolyData()
    lps = vtk_to_numpy(polydata.GetPoints().GetData()) * [-1.0, -1.0, 1.0]
    np.testing.assert_allclose(lps, mesh_points(expected.mesh), atol=1e-4)
    tos = vtk_to_numpy(polydata.GetPointData().GetArray(TOS_ARRAY))
    want = vtk_to_numpy(expected.mesh.GetPointData().GetArray(TOS_ARRAY))
    np.testing.assert_allclose(tos, want, atol=1e-3)
    assert 17.0 <= tos.min() and tos.max() < 200.0  # an LBBB map in ms, not normalised values
    display = result.model.GetDisplayNode()
    assert display.GetActiveScalarName() == TOS_ARRAY and display.GetScalarVisibility()
    assert display.GetColorNode() is not None
    legends = [result.model.GetNthDisplayNode(i) for i in range(result.model.GetNumberOfDisplayNodes())]
    assert any(n.IsA("vtkMRMLColorLegendDisplayNode") for n in legends)
    # the bullseye image and the 17-segment table, with the same suggested lead as in-process
    png = sitk.ReadImage(str(_written_bullseye(expected, tmp_path)))
    assert result.bullseye.GetImageData().GetDimensions() == (*png.GetSize(), 1)
    assert result.bullseye.GetImageData().GetNumberOfScalarComponents() == png.GetNumberOfComponentsPerPixel()
    rows = mrml.dict_from_table(result.table)
    assert len(rows) == 17
    assert result.lma["lead"]["segment"] == expected.lead["segment"] is not None
    lead_rows = [name for name, row in rows.items() if row["suggested_lead"] == 1.0]
    assert lead_rows == [f"{expected.lead['segment']} {expected.lead['name']}"]
    for name, row in rows.items():
        want = next(r for r in expected.segments if f"{r['segment']} {r['name']}" == name)
        assert row["points"] == want["points"]
        assert row["tos_median_ms"] == pytest.approx(want["tos_median_ms"], abs=1e-6, nan_ok=True)
    # inputs unchanged, three new nodes and their display nodes; progress reached the end
    assert _state(labels) == before
    assert mrml_scene.GetNumberOfNodes() > nodes_before + 3
    assert reports[-1] == (1.0, "done")
    stages = [(f, t) for f, t in reports if t in ("3D myocardium (shape)", "surface, TOS map and AHA segments")]
    assert [t for _, t in stages] == ["3D myocardium (shape)", "surface, TOS map and AHA segments"]  # lma's stages
    assert 0.05 < stages[0][0] < stages[1][0] < 0.9  # on the bar's share of the child


def _array(node, name: str) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(node.GetPolyData().GetPointData().GetArray(name))


def _run(job, lma_cli, **expected_options):
    """(the job's result, ``run_lma`` in this process on the files the job wrote, with ``expected_options``)."""
    from CardiacDiffusionLib.cli.lma import read_labelled_stack

    job.cli_module, job.keep_files = lma_cli, True
    try:
        result = job.start().wait(timeout=180)
        assert result is not None, "the job did not finish in 180 s"
        stack = read_labelled_stack(str(job.folder / "sax_labels.nrrd"), None, "project")
        return result, stack, run_lma(stack, **expected_options)
    finally:
        shutil.rmtree(job.folder, ignore_errors=True)


def test_late_threshold_scar_and_apical_reach_the_job(mrml_scene, case, lma_cli):
    """The module's late threshold (ms), scar segments and 'apical lead segments' change the child's map: the
    late rule in lma.json and the model's late_activation array, the lead (the LBBB phantom's latest free-wall
    segments 5, 6, 11, 12 marked scar leave the apical lateral 16 only when apical segments may be suggested),
    and the sector points come as a model with the table's TOS at the mid-wall points, in RAS."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import LATE_ARRAY, TOS_ARRAY, ActivationJob

    stack, good, _ = case
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    scar = [5, 6, 11, 12]
    job = ActivationJob(mrml_scene, labels, tos_file=str(good), late_threshold_ms=120.0, scar=scar, include_apical=True)
    result, read, expected = _run(job, lma_cli, tos_csv=good, late_threshold_ms=120.0, scar=scar,
                                  include_apical=True)  # fmt: skip
    default = run_lma(read, tos_csv=good)  # the CLI's defaults: 75th percentile, no scar, basal and mid only

    late = result.lma["late_activation"]
    assert late["rule"] == "TOS >= 120 ms" and late["threshold_ms"] == 120.0
    assert default.lma["late_activation"]["rule"] == "TOS >= 75th percentile"
    tos, flags = _array(result.model, TOS_ARRAY), _array(result.model, LATE_ARRAY)
    np.testing.assert_array_equal(flags, tos >= 120.0)
    assert flags.mean() == pytest.approx(late["late_fraction_of_points"], abs=1e-4)
    assert late["late_fraction_of_points"] == expected.lma["late_activation"]["late_fraction_of_points"]
    assert abs(flags.mean() - default.lma["late_activation"]["late_fraction_of_points"]) > 0.02  # 0.28 vs 0.25
    # scar and apical: the lead the in-process run gives, and not the default's
    assert default.lead["segment"] == 5
    assert result.lma["lead"]["segment"] == expected.lead["segment"] == 16
    assert "apical" in result.lma["lead"]["rule"] and result.lma["lead"]["excluded_scar"] == scar
    assert run_lma(read, tos_csv=good, scar=scar).lead["segment"] not in (16, *scar)  # without apical: another
    rows = mrml.dict_from_table(result.table)
    assert sorted(int(name.split()[0]) for name, row in rows.items() if row["scar"] == 1.0) == scar
    # the sector points: 18 per TOS slice, the table's values, at the in-process mid-wall points (LPS -> RAS)
    points = result.sector_points
    assert points.GetPolyData().GetNumberOfPoints() == expected.sector_points.size // 3 == 18 * len(expected.tos)
    np.testing.assert_allclose(_array(points, TOS_ARRAY), expected.tos.ravel(), atol=1e-3)
    from vtk.util.numpy_support import vtk_to_numpy

    ras = vtk_to_numpy(points.GetPolyData().GetPoints().GetData())
    np.testing.assert_allclose(ras, expected.sector_points.reshape(-1, 3) * [-1.0, -1.0, 1.0], atol=1e-4)
    assert points.GetPolyData().GetNumberOfVerts() == len(ras)  # vertices: shown as dots
    # both models in one colour scale: a colour means the same TOS on the surface and on the points
    ranges = [n.GetDisplayNode().GetScalarRange() for n in (result.model, points)]
    assert ranges[0] == ranges[1] and ranges[0][0] <= tos.min() and tos.max() <= ranges[0][1]
    assert points.GetDisplayNode().GetColorNodeID() == result.model.GetDisplayNode().GetColorNodeID()
    assert points.GetDisplayNode().GetActiveScalarName() == TOS_ARRAY


def test_strain_slices_and_landmarks_reach_the_job(mrml_scene, case, lma_cli, tmp_path):
    """Strain on 3 of the 9 slices (named as the module's strain slices) and base/apex points placed in the
    scene (RAS) give the child's frame what run_lma gives in LPS: the TOS slices and the base/apex heights."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob

    stack, good, _ = case
    frame = lv_frame(stack)
    chosen = [int(k) for k in frame.slices[[1, 4, 7]]]
    strain = ActivationPhantom(3, "lbbb").strain_matrices(3, 18, 40, 17.0, heights=frame.slice_heights()[[1, 4, 7]])
    np.save(tmp_path / "strain.npy", strain)
    gap = float(np.median(np.abs(np.diff(stack.positions))))
    base, apex = frame.centres[0] - 0.3 * gap * frame.axis, frame.centres[-1] + 1.5 * gap * frame.axis  # LPS
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    base_node, apex_node = (mrml.markups_from_points(mrml_scene, p[None], n) for p, n in ((base, "base"), (apex, "apex")))
    job = ActivationJob(mrml_scene, labels, strain_file=str(tmp_path / "strain.npy"), strain_slices=chosen,
                        base=base_node, apex=apex_node)  # fmt: skip
    result, _, expected = _run(job, lma_cli, strain=strain, strain_slices=chosen, base=base, apex=apex)
    assert sorted(result.lma["tos_slices"]) == sorted(chosen) == sorted(expected.lma["tos_slices"])
    got, want = result.lma["frame"], expected.lma["frame"]
    assert got["apex_position_mm"] == pytest.approx(float(apex @ frame.axis), abs=1e-2) == want["apex_position_mm"]
    assert got["base_position_mm"] == pytest.approx(float(base @ frame.axis), abs=1e-2)
    assert got["slice_heights"] == want["slice_heights"]
    assert result.sector_points.GetPolyData().GetNumberOfPoints() == 3 * 18
    np.testing.assert_allclose(result.lma["tos_ms"], expected.lma["tos_ms"], atol=0.02)


def test_a_misplaced_rv_insertion_flag_reads_in_the_panels_terms(mrml_scene, case, lma_cli):
    """A point list 40 mm out from the anterior insertion: the child flags it (rv_insertion_far) and the panel's
    summary says the markup as placed (RAS) and the field's name, no command-line option; lma.json keeps LPS."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob

    stack, good, _ = case
    frame = lv_frame(stack)
    i = len(frame.slices) // 2
    out = frame.insertion_points[i] - frame.centres[i]
    point = frame.insertion_points[i] + 40.0 * out / np.linalg.norm(out)  # LPS
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    markup = mrml.markups_from_points(mrml_scene, point[None], "RV insertion")
    job = ActivationJob(mrml_scene, labels, tos_file=str(good), rv_insertion=markup)
    result, _, expected = _run(job, lma_cli, tos_csv=good, rv_insertion=point[None])
    said = [f for f in result.lma["qa"] if f["code"] == "rv_insertion_far"]
    written = [f for f in expected.lma["qa"] if f["code"] == "rv_insertion_far"]
    assert len(said) == 1 and len(written) == 1 and "--rv-insertion" in written[0]["message"]
    assert "--" not in said[0]["message"] and "empty the module's RV insertion field" in said[0]["message"], said
    assert said[0]["message"].startswith("RV insertion 'RV insertion' point 1 at RAS ("), said
    ras = f"{-point[0]:.1f}"  # the markup's R coordinate as the panel says it
    assert ras in said[0]["message"] or f"{-point[0]:g}" in said[0]["message"], said[0]["message"]


def _written_bullseye(expected, folder):
    """The bullseye PNG of ``expected`` written to ``folder`` (to compare sizes with the loaded image)."""
    from CardiacDiffusionLib.activation.bullseye import write_bullseye_png

    return write_bullseye_png(folder / "bullseye.png", expected.segments, expected.lead)


def test_activation_job_failure_leaves_the_scene(mrml_scene, case, lma_cli):
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob

    stack, _, bad = case
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    nodes_before = mrml_scene.GetNumberOfNodes()
    job = ActivationJob(mrml_scene, labels, tos_file=str(bad))
    job.cli_module = lma_cli
    job.start()
    with pytest.raises(ProcessFailed, match="physiological range"):
        job.wait(timeout=120)
    assert mrml_scene.GetNumberOfNodes() == nodes_before
    assert not job.folder.exists()


def test_activation_job_arguments(mrml_scene, case, tmp_path):
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob

    stack, good, _ = case
    image = mrml.volume_node_from_image(mrml_scene, stack.to_image(), "SAX")
    labels = mrml.segmentation_from_labels(mrml_scene, stack.to_image(labels=True), "SAX seg", surfaces=False)
    rv = mrml.markups_from_points(mrml_scene, np.array([[-10.0, -20.0, 30.5]]), "RV insertion")  # LPS: the patient's right
    with pytest.raises(InputError, match="exactly one of"):
        ActivationJob(mrml_scene, labels, tos_file=str(good), strain_file=str(good))
    with pytest.raises(InputError, match="file not found"):
        ActivationJob(mrml_scene, labels, tos_file=str(tmp_path / "none.csv"))
    with pytest.raises(InputError, match="SAX labels: none selected"):
        ActivationJob(mrml_scene, None, tos_file=str(good))
    job = ActivationJob(mrml_scene, labels, tos_file=str(good), sax_volume=image, rv_insertion=rv, scar=[5, 11])
    arguments = job._export(tmp_path)
    slices = ["--slices", str(tmp_path / "sax.nrrd"), "--slice-labels", str(tmp_path / "sax_labels.nrrd")]
    assert arguments[:4] == slices
    assert arguments[arguments.index("--rv-insertion") + 1] == "-10.0,-20.0,30.5"  # LPS, as the CLI takes it
    # and the command's parser reads it as a point, not as an option (argparse's rule for words starting with -)
    from CardiacDiffusionLib.cli.main import _values_not_options, build_parser

    parsed = build_parser().parse_args(_values_not_options(["lma", *arguments, "--out", str(tmp_path / "o")]))
    np.testing.assert_array_equal(parsed.rv_insertion[0], [-10.0, -20.0, 30.5])
    # the command's advice, in module terms: no command-line option a module user cannot pass
    from CardiacDiffusionLib.activation.sectors import lv_frame

    no_rv = stack.with_labels(np.where(stack.labels == 3, 0, stack.labels))
    with pytest.raises(InputError) as refused:
        lv_frame(no_rv)
    assert "RV insertion field" in job._in_module_terms(str(refused.value)) and "--" not in job._in_module_terms(str(refused.value))
    assert arguments[-5:] == ["--scar", "5", "11", "--progress", "json"]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sax_labels.nrrd")))
    np.testing.assert_array_equal(written, stack.labels)  # the segmentation, back on the SAX grid
    # a labelmap in ACDC numbering is converted on export when the module says so; a segmentation never is
    from CardiacDiffusionLib.labels import convert_labels

    acdc = mrml.volume_node_from_image(mrml_scene, stack.with_labels(convert_labels(stack.labels, "project", "acdc"))
                                       .to_image(labels=True), "ACDC labels", labelmap=True)  # fmt: skip
    for node, folder in ((acdc, tmp_path / "acdc"), (labels, tmp_path / "seg")):
        folder.mkdir()
        ActivationJob(mrml_scene, node, tos_file=str(good), label_numbering="acdc")._export(folder)
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "sax_labels.nrrd")))
        np.testing.assert_array_equal(written, stack.labels)
    with pytest.raises(InputError, match="label numbering 'ukbb' is unknown"):
        ActivationJob(mrml_scene, labels, tos_file=str(good), label_numbering="ukbb")


def test_activation_job_options_to_arguments_and_refusals(mrml_scene, case, tmp_path):
    """Each module option becomes the command's option (defaults: none added), and a bad one is refused before
    the child starts, in the module's words."""
    from CardiacDiffusionLib.cli.main import _values_not_options, build_parser
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob, parse_numbers

    stack, good, _ = case
    labels = mrml.volume_node_from_image(mrml_scene, stack.to_image(labels=True), "SAX labels", labelmap=True)
    strain = tmp_path / "strain.npy"
    np.save(strain, np.zeros((3, 18, 20)))

    def parsed(job, folder):
        folder.mkdir()
        return build_parser().parse_args(_values_not_options(["lma", *job._export(folder), "--out", str(folder / "o")]))

    default = parsed(ActivationJob(mrml_scene, labels, tos_file=str(good)), tmp_path / "a")
    assert (default.late_percentile, default.late_threshold, default.include_apical, default.scar) == (75.0, None, False, [])
    assert (default.base, default.apex, default.strain_slices, default.device) == (None, None, None, "auto")
    point = mrml.markups_from_points(mrml_scene, np.array([[-3.0, 4.0, -5.5]]), "apex")
    job = ActivationJob(mrml_scene, labels, strain_file=str(strain), late_threshold_ms=110, late_percentile=60,
                        include_apical=True, scar=[11, 5, 5], strain_slices=[6, 2, 4], apex=point, method="sadir",
                        device="cpu")  # fmt: skip
    args = parsed(job, tmp_path / "b")
    assert args.late_threshold == 110.0 and args.include_apical and args.scar == [5, 11]
    assert args.strain_slices == [6, 2, 4] and args.device == "cpu" and args.method == "sadir"  # rows' order kept
    np.testing.assert_array_equal(args.apex, [-3.0, 4.0, -5.5])  # LPS, as placed
    assert args.base is None
    assert "--device" not in ActivationJob(mrml_scene, labels, tos_file=str(good), device="cuda")._export(tmp_path)
    for options, message in (
        ({"late_threshold_ms": 0.0}, "late threshold 0 ms: give a TOS above 0 and at most 300"),
        ({"late_threshold_ms": 450.0}, "at most 300 ms"),
        ({"scar": [5, 18]}, r"scar segments: \[18\] are not AHA segments"),
        ({"strain_slices": [1, 2]}, "strain slices: .* with a TOS table"),
        ({"apex": mrml.markups_from_points(mrml_scene, np.zeros((2, 3)), "two")}, "LV apex point list 'two': holds 2"),
        ({"device": "tpu"}, "device 'tpu' is unknown"),
    ):
        with pytest.raises(InputError, match=message):
            ActivationJob(mrml_scene, labels, tos_file=str(good), **options)
    with pytest.raises(InputError, match="strain slices: 2 given more than once; give each"):
        ActivationJob(mrml_scene, labels, strain_file=str(strain), strain_slices=[2, 2, 3])
    assert parse_numbers("5, 11;14 13-15", "x") == [5, 11, 14, 13, 14, 15] and parse_numbers(" ", "x") == []
    for text in ("five", "5-3", "1.5", "-2"):
        with pytest.raises(InputError, match=f"scar segments: '{re.escape(text)}' is not a number"):
            parse_numbers(text, "scar segments")


# ---- the Slicer module file, on slicer-core with stand-ins for its Qt side ----------------------


def test_activation_module_self_test_runs_on_slicer_core(mrml_scene, monkeypatch, lma_cli):
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob

    monkeypatch.setattr(ActivationJob, "cli_module", lma_cli)
    module = load_panel("ActivationMap", monkeypatch, mrml_scene)
    assert module.parseSegments("5, 11;14") == [5, 11, 14] and module.parseSegments("") == []
    assert module.parseSegments("10-12") == [10, 11, 12]
    with pytest.raises(InputError, match="scar segments: 'lateral' is not a number"):
        module.parseSegments("5, lateral")
    assert module.ActivationMapLogic().ensureDependencies(ask=False)  # nothing to install here
    result = module.ActivationMapTest("runTest").run()
    assert result.wasSuccessful(), [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1 and not result.skipped


def test_activation_summary_names_near_ties(mrml_scene, monkeypatch):
    """The module's summary: one decision-support line, with the segments within 5 ms of the suggested one."""
    from types import SimpleNamespace

    module = load_panel("ActivationMap", monkeypatch, mrml_scene)
    lead = {"segment": 6, "name": "basal anterolateral", "tos_median_ms": 200.0, "near_ties": [12], "near_tie_ms": 5.0}
    lines = module.ActivationMapLogic.summary(SimpleNamespace(lma={"qa": [], "lead": lead}))
    assert lines == ["Decision support, not a diagnosis: latest-activating eligible segment 6 (basal anterolateral, "
                     "median TOS 200 ms; within 5 ms: segment(s) 12)."]  # fmt: skip


def test_lma_refusals_read_in_the_panels_terms(mrml_scene, case, tmp_path, capsys):
    """Real refusals of ``lma`` (its ``main`` run here on the files the job exported) for what an ActivationMap
    panel user can choose, through the job's translation: node names and the panel's field labels, no
    command-line option, no temporary file."""
    from CardiacDiffusionLib.cli.main import main
    from CardiacDiffusionLib.labels import convert_labels
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob
    from CardiacDiffusionLib.slicer_adapter.job import TERMINAL_COMMAND

    stack, good, bad = case
    frame = lv_frame(stack)
    strain = ActivationPhantom(3, "lbbb").strain_matrices(3, 18, 40, 17.0, heights=frame.slice_heights()[[1, 4, 7]])
    np.save(tmp_path / "strain.npy", strain)
    np.save(tmp_path / "percent.npy", 100 * strain)
    gap = float(np.median(np.abs(np.diff(stack.positions))))
    swapped = [mrml.markups_from_points(mrml_scene, p[None], n) for p, n in (
        (frame.centres[-1] + gap * frame.axis, "base"), (frame.centres[0] - gap * frame.axis, "apex"))]  # fmt: skip

    def labelmap(values, name):
        return mrml.volume_node_from_image(mrml_scene, stack.with_labels(values).to_image(labels=True), name, labelmap=True)

    labels = labelmap(stack.labels, "SAX labels")
    strain_file = str(tmp_path / "strain.npy")
    cases = [  # (job options, what the panel user reads)
        ({"sax_labels": labelmap(np.where(stack.labels == 3, 0, stack.labels), "no RV")},
         "as a point list in the module's RV insertion field"),
        ({"sax_labels": labelmap(convert_labels(stack.labels, "project", "acdc"), "acdc")},
         "set the module's Label numbering to ACDC"),
        ({"tos_file": str(bad)}, "physiological range"),  # bad.csv is the user's own file: named as it is
        ({"strain_file": strain_file}, "name the slices in the Strain slices field"),
        ({"sax_volume": mrml.volume_node_from_image(mrml_scene, sitk.Shrink(stack.to_image(), [2, 2, 1]), "coarse")},
         "SAX labels: node 'SAX labels' is not on the image's grid"),  # the panel's field, as Reconstruction names it
        ({"strain_file": strain_file, "strain_slices": [1, 4, 99]}, "TOS slices [99]: no LV myocardium"),
        ({"tos_file": str(good), "base": swapped[0], "apex": swapped[1]}, "check LV base point/LV apex point"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(({"tos_file": str(good), "method": "sadir", "device": "cuda"}, "set Device (sadir) to cpu"))
    for index, (options, expected) in enumerate(cases):
        source = {} if "strain_file" in options else {"tos_file": str(good)}
        job = ActivationJob(mrml_scene, **{"sax_labels": labels, **source, **options})
        job.folder = tmp_path / f"CardiacDiffusion-lma-{index}"
        job.folder.mkdir()
        assert main([job.command, *job._export(job.folder), "--out", str(job.folder / "out")]) == 2
        said = job._in_module_terms([e for e in capsys.readouterr().err.splitlines() if e.startswith("error: ")][-1])
        assert "--" not in TERMINAL_COMMAND.sub("", said), said
        assert str(job.folder) not in said and not any(path.name in said for path in job.exported), said
        assert expected in said, said
    for options, expected in (  # what the job checks itself is refused before a child starts, in the panel's words
        ({"strain_file": str(tmp_path / "percent.npy")}, r"Strain \(.npy\) .*percent.npy: values up to .* look like percent"),
        ({"strain_file": strain_file, "strain_slices": [1, 4]}, "strain slices: 2 given for the 3 strain rows"),
        ({"strain_file": str(good)}, r"Strain \(.npy\) .*tos.csv: .* is not a NumPy .npy/.npz array"),
    ):
        with pytest.raises(InputError, match=expected):
            ActivationJob(mrml_scene, labels, **options)
