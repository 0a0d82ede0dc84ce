"""Fresh-eyes review of the synthetic-data workflow as a user meets it: count options bounded before any work,
sampled pairs (grid, frame, labels, HU, seeds) from the shipped LDM, their Slicer nodes on slicer-core, and
``segment`` on the shared real CT (its own grid; a single slice or thin slab refused)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.labels import CT_LABELS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py
REAL_CT = Path("/work/shared/data/totalseg-ct/ct_cropped.nii.gz")  # 122 x 102 x 112, 1.5 mm, HU
FEATURES = [4, 8, 8, 16, 16, 4]


def refused(capsys, argv: list[str]) -> str:
    """The one `error:` line of a refused command (exit code 2, no traceback; argparse's refusals exit)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    return err[-1]


def no_work(*args, **kwargs):
    raise AssertionError("the work started: the option should have been refused first")


def test_count_options_are_bounded_before_any_work(tmp_path, capsys, monkeypatch):
    """`evaluate ldm --repeats 10**12` once started training (three networks per repeat, ~3 min each on one thread:
    forever); `sample --n 10**20` was refused naming --seed with a negative range. The work itself is replaced so
    that a missing bound fails here instead of running for hours."""
    import CardiacDiffusionLib.ldm.evaluate as ldm_evaluate
    import CardiacDiffusionLib.ldm.generate as generate
    from CardiacDiffusionLib.cli.evaluate import LDM_MAX_REPEATS, LDM_MAX_STEPS
    from CardiacDiffusionLib.cli.sample import MAX_PAIRS

    monkeypatch.setattr(ldm_evaluate, "evaluate_ldm", no_work)
    monkeypatch.setattr(generate, "iter_pairs", no_work)
    out = tmp_path / "eval.json"
    said = refused(capsys, ["evaluate", "ldm", "--repeats", str(10**12), "--out", str(out)])
    assert said.startswith(f"error: --repeats {10**12}: at most {LDM_MAX_REPEATS} (") and "--seed" in said, said
    assert "at most" in refused(capsys, ["evaluate", "ldm", "--repeats", str(LDM_MAX_REPEATS + 1)])
    for option in ("--ssl-steps", "--finetune-steps"):
        said = refused(capsys, ["evaluate", "ldm", option, str(LDM_MAX_STEPS + 1), "--out", str(out)])
        assert said.startswith(f"error: {option} {LDM_MAX_STEPS + 1}: at most {LDM_MAX_STEPS}"), said
    assert "invalid int value: '1.5'" in refused(capsys, ["evaluate", "ldm", "--repeats", "1.5"])
    assert not out.exists()
    samples = tmp_path / "samples"
    for n in (10**20, MAX_PAIRS + 1):
        said = refused(capsys, ["sample", "--n", str(n), "--out", str(samples)])
        assert said.startswith(f"error: --n {n}: at most {MAX_PAIRS} pairs a run") and "-9" not in said, said
    assert "--steps 5000: at most 1000 DDIM steps" in refused(capsys, ["sample", "--steps", "5000", "--out", str(samples)])
    assert "--seed -1: give a seed from 0" in refused(capsys, ["sample", "--seed", "-1", "--out", str(samples)])
    assert not samples.exists()


def test_sampled_pairs_share_one_frame_and_a_seed_gives_identical_files(tmp_path, capsys):
    """The shipped LDM (ldm-ct-phantom-32): image Int16 HU in the window, labels UInt8 0..8, one 32^3 grid of 5 mm
    centred on the origin, identity LPS direction (NIfTI affine diag(-5, -5, 5): RAS as Slicer shows it); the same
    seed writes byte-identical files, and pair i of seed S is pair 0 of seed S + i."""
    import nibabel as nib

    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main(["sample", "--n", "2", "--seed", str(seed), "--steps", "3", "--device", "cpu",
                     "--out", str(runs[name])]) == 0  # fmt: skip
    capsys.readouterr()
    info = json.loads((runs["a"] / "labels.json").read_text())
    assert info["labels"] == {str(k): v for k, v in CT_LABELS.items()} and info["spacing_mm"] == [5.0] * 3
    assert info["model"]["name"] == "ldm-ct-phantom-32" and [s["seed"] for s in info["samples"]] == [0, 1]
    for i in range(2):
        image = sitk.ReadImage(str(runs["a"] / f"sample_{i:03d}_image.nii.gz"))
        labels = sitk.ReadImage(str(runs["a"] / f"sample_{i:03d}_labels.nii.gz"))
        for img in (image, labels):
            assert img.GetSize() == (32, 32, 32) and img.GetSpacing() == (5.0, 5.0, 5.0)
            assert img.GetOrigin() == pytest.approx((-77.5,) * 3) and img.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert image.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
        hu, lab = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)
        assert -200 <= hu.min() and hu.max() <= 800 and set(np.unique(lab)) <= set(range(9))
        assert len(np.unique(lab)) >= 5  # a heart, not one blob
        affine = nib.load(str(runs["a"] / f"sample_{i:03d}_image.nii.gz")).affine
        np.testing.assert_allclose(affine, [[-5, 0, 0, 77.5], [0, -5, 0, 77.5], [0, 0, 5, -77.5], [0, 0, 0, 1]])
        for name in (f"sample_{i:03d}_image.nii.gz", f"sample_{i:03d}_labels.nii.gz"):
            assert (runs["a"] / name).read_bytes() == (runs["b"] / name).read_bytes(), name
    a1 = sitk.GetArrayFromImage(sitk.ReadImage(str(runs["a"] / "sample_001_image.nii.gz")))
    c0 = sitk.GetArrayFromImage(sitk.ReadImage(str(runs["c"] / "sample_000_image.nii.gz")))
    a0 = sitk.GetArrayFromImage(sitk.ReadImage(str(runs["a"] / "sample_000_image.nii.gz")))
    assert np.abs(a1.astype(int) - c0).max() <= 1 and np.abs(a0.astype(int) - a1).mean() > 10  # seeds differ


@pytest.mark.mrml
def test_sampled_pair_nodes_keep_the_files_frame_names_and_colours(mrml_scene):
    """SampleJob on the shipped LDM (slicer-core scene): a scalar volume and a segmentation per pair, named by seed;
    the volume's IJK-to-RAS is the file's LPS frame flipped in x and y; the 8 segments carry the label table's
    structures in label order with the module's colours and give back the labels file voxel for voxel."""
    import vtk

    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.synthetic import CT_COLORS, CT_DESCRIPTIONS, SampleJob

    job = SampleJob(mrml_scene, count=1, seed=4, steps=3, device="cpu", surfaces=False, keep_files=True)
    result = job.start().wait(timeout=300)
    volume, segmentation = result.volumes[0], result.segmentations[0]
    assert volume.GetClassName() == "vtkMRMLScalarVolumeNode" and volume.GetName() == "Synthetic CT seed 4"
    assert segmentation.GetClassName() == "vtkMRMLSegmentationNode"
    assert segmentation.GetName() == "Synthetic CT seed 4 segmentation"
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(ras, [[-5, 0, 0, 77.5], [0, -5, 0, 77.5], [0, 0, 5, -77.5], [0, 0, 0, 1]])
    segments = segmentation.GetSegmentation()
    order = [segments.GetNthSegment(i) for i in range(segments.GetNumberOfSegments())]
    assert [s.GetName() for s in order] == [CT_DESCRIPTIONS[name] for name in CT_LABELS.values()]
    for segment, name in zip(order, CT_LABELS.values()):
        assert segment.GetColor() == pytest.approx(CT_COLORS[name], abs=1e-6), name
    image = mrml.image_from_volume_node(volume)
    back = mrml.labels_from_segmentation(segmentation, image, {CT_DESCRIPTIONS[n]: v for v, n in CT_LABELS.items()})
    written = sitk.ReadImage(str(job.folder / "out" / "sample_000_labels.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(written))
    hu = sitk.ReadImage(str(job.folder / "out" / "sample_000_image.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(hu))
    assert image.GetOrigin() == pytest.approx(hu.GetOrigin()) and image.GetDirection() == pytest.approx(hu.GetDirection())


@pytest.fixture(scope="module")
def untrained_ctseg(tmp_path_factory) -> Path:
    """A ctseg_unet export as `train ctseg` writes it (the grid it records), untrained: enough to check grids and
    refusals; a trained one's volumes are in the report."""
    from CardiacDiffusionLib.ldm.seg_tasks import N_CLASSES, build_seg_unet
    from CardiacDiffusionLib.models.store import save_model

    path = tmp_path_factory.mktemp("ctseg") / "model.safetensors"
    config = {"out_channels": N_CLASSES, "features": FEATURES,
              "input": {"size": 32, "spacing_mm": 5.0, "centre": "labels", "hu_window": [-200.0, 800.0]}}  # fmt: skip
    save_model(build_seg_unet(config), path, config, "ctseg_unet")
    return path


@pytest.mark.skipif(not REAL_CT.is_file(), reason="shared real CT not available")
def test_segment_keeps_the_real_cts_grid_and_refuses_a_slice_of_it(untrained_ctseg, tmp_path, capsys):
    """The real CT: labels.nii.gz on its own grid (size, spacing, origin, direction equal; every voxel), labels.json's
    volumes the label counts times 1.5^3 mm^3. One slice of it (122 x 102 x 1), a 3-slice slab (4.5 mm) and the
    whole CT with its spacing in metres were segmented as if they were a heart in a cube of air; now refused."""
    out = tmp_path / "seg"
    assert main(["segment", "--model", str(untrained_ctseg), "--image", str(REAL_CT), "--out", str(out),
                 "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    ct, labels = sitk.ReadImage(str(REAL_CT)), sitk.ReadImage(str(out / "labels.nii.gz"))
    assert labels.GetSize() == ct.GetSize() == (122, 102, 112) and labels.GetSpacing() == ct.GetSpacing()
    assert labels.GetOrigin() == ct.GetOrigin() and labels.GetDirection() == ct.GetDirection()
    values = sitk.GetArrayFromImage(labels)
    assert values.size == 122 * 102 * 112 and set(np.unique(values)) <= set(range(9))
    info = json.loads((out / "labels.json").read_text())
    assert info["grid"]["origin"] == list(ct.GetOrigin()) and info["grid"]["size"] == [122, 102, 112]
    for value, name in CT_LABELS.items():
        assert info["volumes_ml"][name] == pytest.approx(np.sum(values == value) * 1.5**3 / 1000, abs=1e-3)
    for name, cut in (("slice", ct[:, :, 50:51]), ("slab", ct[:, :, 50:53])):
        path = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(cut, str(path))
        before = path.read_bytes()
        said = refused(capsys, ["segment", "--model", str(untrained_ctseg), "--image", str(path),
                                "--out", str(tmp_path / f"out_{name}"), "--device", "cpu"])  # fmt: skip
        thick = f"{cut.GetSize()[2] * 1.5:g}"
        assert f"spanning 183 x 153 x {thick} mm, thinner than 20 mm along z (a single slice or thin slab" in said, said
        assert path.read_bytes() == before and not (tmp_path / f"out_{name}").exists()
    metres = sitk.Image(ct)
    metres.SetSpacing((0.0015,) * 3)  # the spacing in m: a 0.18 mm speck in the model's 160 mm cube
    sitk.WriteImage(metres, str(tmp_path / "metres.nii.gz"))
    said = refused(capsys, ["segment", "--model", str(untrained_ctseg), "--image", str(tmp_path / "metres.nii.gz"),
                            "--out", str(tmp_path / "out_metres"), "--device", "cpu"])  # fmt: skip
    assert "thinner than 20 mm along x, y, z (its spacing in m or cm, not mm?" in said, said


def test_evaluate_ldm_compares_a_real_ct_only_when_given_and_checks_it_first(tmp_path, capsys, monkeypatch):
    """The real-CT comparison read a fixed /work/shared path (silently null elsewhere); now `--real-ct CT MASK`,
    read and checked before any work, its heart HU the same as computed from the files directly."""
    from CardiacDiffusionLib.ldm import evaluate as ldm_evaluate
    from helpers import error_line

    ct, mask = REAL_CT, REAL_CT.parent / "heart.nii.gz"
    stats = ldm_evaluate.real_ct_heart((ct, mask))
    # docs/models/ldm.md: heart mask HU median 466 (p5 93, p95 652), 669 ml (the mask is on its own grid: resampled)
    assert (round(stats["p50"]), round(stats["p5"]), round(stats["p95"]), round(stats["volume_ml"])) == (466, 93, 652, 669)
    assert ldm_evaluate.real_ct_heart(None) is None

    monkeypatch.setattr(ldm_evaluate, "evaluate_ldm", lambda *a, **k: pytest.fail("the work started"))
    away = tmp_path / "away.nii.gz"
    image = sitk.ReadImage(str(mask))
    image.SetOrigin((5000.0, 5000.0, 5000.0))
    sitk.WriteImage(image, str(away))
    line = error_line(["evaluate", "ldm", "--real-ct", str(ct), str(away)], capsys)
    assert "no voxel of the heart mask lies on" in line
    line = error_line(["evaluate", "ldm", "--real-ct", str(ct), str(tmp_path / "missing.nii.gz")], capsys)
    assert "missing.nii.gz" in line
