"""``scripts/slicer_batch.py`` under plain Python with slicer-core, on an MR phantom subject.

The script is run as a separate process (its exit code is part of the contract) on files written by
``write_subject``; its outputs are checked against the Lib computing the same thing in-process.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.io.volumes import read_labels, read_stack
from CardiacDiffusionLib.labels import MR_LABEL_DESCRIPTIONS
from CardiacDiffusionLib.phantoms.scanner import LAX_VIEWS, make_subject, write_subject
from CardiacDiffusionLib.reconstruction.lax_check import lax_dice_table
from CardiacDiffusionLib.reconstruction.volume import reconstruct

pytestmark = pytest.mark.mrml
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slicer_batch.py"
SPACING = 2.0


@pytest.fixture(scope="module")
def subject_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subject")
    return write_subject(make_subject(seed=2, matrix=96), folder, dicom=False)


@pytest.fixture(scope="module")
def batch(subject_files, tmp_path_factory):
    """One batch run (shape, 2 mm) with the SAX labels and all three LAX views."""
    out = tmp_path_factory.mktemp("out")
    f = subject_files
    command = [sys.executable, str(SCRIPT), "--sax", str(f["sax_image"]), "--sax-labels", str(f["sax_labels"])]
    command += ["--lax", *(str(f[f"lax_{v}_image"]) for v in LAX_VIEWS)]
    command += ["--lax-labels", *(str(f[f"lax_{v}_labels"]) for v in LAX_VIEWS)]
    command += ["--method", "shape", "--spacing", str(SPACING), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    expected = reconstruct(read_stack(f["sax_image"], f["sax_labels"]), "shape", SPACING)
    return done, out, expected


def test_batch_writes_volume_on_the_input_frame(batch, subject_files):
    done, out, expected = batch
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "lax_dice_shape.schema.tsv", "lax_dice_shape.tsv", "reconstruction_shape.nrrd", "reconstruction_shape.seg.nrrd",
    ]  # fmt: skip
    sax = sitk.ReadImage(str(subject_files["sax_image"]))
    volume = sitk.ReadImage(str(out / "reconstruction_shape.nrrd"))
    np.testing.assert_allclose(volume.GetOrigin(), sax.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.GetDirection(), sax.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(volume.GetSpacing(), sax.GetSpacing()[:2] + (SPACING,), atol=1e-5)
    # (n - 1) gaps of 10 mm at 2 mm, plus one
    assert volume.GetSize() == sax.GetSize()[:2] + (int(round((sax.GetSize()[2] - 1) * 10 / SPACING)) + 1,)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(volume), sitk.GetArrayFromImage(expected.image), atol=1e-4
    )


def test_batch_segmentation_has_the_reconstructed_labels(batch, mrml_scene):
    import slicer

    from CardiacDiffusionLib.slicer_adapter import mrml

    _, out, expected = batch
    node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(out / "reconstruction_shape.seg.nrrd"))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    assert names == set(MR_LABEL_DESCRIPTIONS.values())
    labels = mrml.labels_from_segmentation(node, expected.labels)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(expected.labels))


def test_batch_dice_table_is_the_lax_dice(batch, subject_files):
    _, out, expected = batch
    with open(out / "lax_dice_shape.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    table = {
        row.pop("LAX"): {k: (None if math.isnan(float(v)) else float(v)) for k, v in row.items()} for row in rows
    }
    lax = {f"lax_{v}_labels": read_labels(subject_files[f"lax_{v}_labels"]) for v in LAX_VIEWS}
    want = lax_dice_table(expected.labels, lax)
    assert table == want
    # a real reconstruction of the phantom, not noise
    assert all(row["LV"] > 0.85 for row in want.values()), want
    assert want["lax_2ch_labels"]["RV"] is None and want["lax_4ch_labels"]["RV"] > 0.7


def _load_script():
    spec = importlib.util.spec_from_file_location("slicer_batch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batch_bad_input_gives_exit_code_2(subject_files, tmp_path, monkeypatch, capsys):
    import slicer

    script = _load_script()
    monkeypatch.setattr(slicer, "mrmlScene", None, raising=False)  # main() sets up its own scene
    missing = ["--sax", str(tmp_path / "nope.nrrd"), "--out", str(tmp_path / "out")]
    assert script.main(missing) == script.EXIT_INPUT
    want = f"error: --sax {tmp_path / 'nope.nrrd'}: file not found; check the path"
    assert capsys.readouterr().err.strip().splitlines() == [want]
    two_for_one = ["--sax", str(subject_files["sax_image"]), "--lax", str(subject_files["lax_2ch_image"]),
                   "--lax-labels", str(subject_files["lax_2ch_labels"]), str(subject_files["lax_4ch_labels"]),
                   "--out", str(tmp_path / "out")]  # fmt: skip
    assert script.main(two_for_one) == script.EXIT_INPUT
    assert "give one per view" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_batch_missing_package_gives_exit_code_2(subject_files, tmp_path, monkeypatch, capsys):
    import slicer

    from CardiacDiffusionLib.slicer_adapter import dependencies

    script = _load_script()
    monkeypatch.setattr(slicer, "mrmlScene", None, raising=False)
    monkeypatch.setattr(dependencies, "missing", lambda: [dependencies.Package("einops", "einops>=0.7")])
    old_pydicom = dependencies.Package("pydicom", "pydicom>=2.4")
    real_outdated = dependencies.outdated  # torch & co. checked as they are; pydicom as an older Slicer bundles it

    def outdated(packages=dependencies.REQUIRED, *rest):
        return [(old_pydicom, "2.2.2")] if packages is dependencies.REQUIRED else real_outdated(packages, *rest)

    monkeypatch.setattr(dependencies, "outdated", outdated)
    assert script.main(["--sax", str(subject_files["sax_image"]), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: Python packages missing or too old: einops>=0.7, pydicom>=2.4 (installed: 2.2.2); "
                            "click Apply once") and error.count("\n") == 1  # fmt: skip
    assert slicer.mrmlScene is None  # stopped before loading anything
