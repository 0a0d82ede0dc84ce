"""Follow-ups of ``reconstruct --phase all`` and the "All cine frames" job: a DICOM cine is scanned once and a 4D file
(and 4D labels) read once for all phases; the modules name the SAX labels by their panel field alike; the batch script
names the files the user gave, not nodes; the frames job's log holds no temporary folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.io import dicom, volumes
from test_panel_cine_frames import frames, make_cine  # noqa: F401  (a 3-frame cine in a real sequence browser)
from test_reconstruct_frames import arrays, cine  # noqa: F401  (the 4-phase DICOM and 4D phantom cine)

ROOT = Path(__file__).resolve().parents[1]


def counted(monkeypatch, module, name: str) -> list:
    """Calls of the real ``module.name`` (still called), one entry (its first argument) each."""
    real, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


# ---- 1. the cine read once -----------------------------------------------------------------------------------------
def test_a_dicom_cine_is_scanned_once_for_all_phases(cine, tmp_path, monkeypatch):  # noqa: F811
    """Was: one scan of every header to count the phases, then one more per phase (4 phases x 12 files: 60 header
    reads; a 25-phase x 11-slice cine: 26 scans, 20 of 39 s of a shape run). Now each file's header is read once,
    its pixels once, and every phase is as ``--phase K`` alone makes it."""
    headers, pixels = counted(monkeypatch, dicom, "_header"), counted(monkeypatch, dicom.pydicom, "dcmread")
    files = sorted(cine["dicom"].iterdir())
    out = tmp_path / "all"
    assert main(["reconstruct", "--method", "nearest", "--sax", str(cine["dicom"]), "--phase", "all", "--spacing", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    assert sorted(headers) == files  # each header once
    assert len(pixels) == 2 * len(files)  # header read + pixel read, once per file
    monkeypatch.undo()
    single = tmp_path / "single"
    assert main(["reconstruct", "--method", "nearest", "--sax", str(cine["dicom"]), "--phase", "2", "--spacing", "2",
                 "--out", str(single)]) == 0  # fmt: skip
    assert (out / "phase_02" / "geometry.json").read_bytes() == (single / "geometry.json").read_bytes()
    for name, array in arrays(single).items():
        np.testing.assert_array_equal(arrays(out / "phase_02")[name], array)


def test_a_4d_file_and_4d_labels_are_read_once(cine, tmp_path, monkeypatch):  # noqa: F811
    """Was: the whole 4D file (and a 4D label file) decoded, CRC-checked and NaN-checked again for every phase (a
    25-phase 4D NIfTI: 47 of 72 s of a shape run). Now once each, and each phase as ``--phase K`` alone makes it."""
    labels4d = tmp_path / "labels4d.nii.gz"
    ed, es = (sitk.ReadImage(str(cine[n])) for n in ("ed", "es"))
    sitk.WriteImage(sitk.JoinSeries([ed, es, es, ed]), str(labels4d))
    reads, voxels = counted(monkeypatch, volumes.sitk, "ReadImage"), counted(monkeypatch, volumes, "_nifti_voxels")
    out = tmp_path / "all"
    assert main(["reconstruct", "--method", "shape", "--sax", str(cine["4d"]), "--sax-labels", str(labels4d),
                 "--phase", "all", "--spacing", "2", "--out", str(out)]) == 0  # fmt: skip
    assert sorted(map(str, reads)) == sorted([str(cine["4d"]), str(labels4d)])
    assert sorted(map(str, voxels)) == sorted([str(cine["4d"]), str(labels4d)])
    monkeypatch.undo()
    single = tmp_path / "single"
    assert main(["reconstruct", "--method", "shape", "--sax", str(cine["4d"]), "--sax-labels", str(labels4d),
                 "--phase", "1", "--spacing", "2", "--out", str(single)]) == 0  # fmt: skip
    assert (out / "phase_01" / "geometry.json").read_bytes() == (single / "geometry.json").read_bytes()
    got = arrays(out / "phase_01")
    assert len(got) == 2
    for name, array in arrays(single).items():
        np.testing.assert_array_equal(got[name], array)


# ---- 2. messages ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def off_grid(tmp_path_factory):
    """(SAX image of MR phantom 0, its labels moved 7 mm off the image's grid, an LBBB TOS table of its slices)."""
    from helpers import lbbb_stack_and_tos

    stack, tos = lbbb_stack_and_tos(tmp_path_factory.mktemp("off_grid"))
    labels = stack.to_image(labels=True)
    labels.SetOrigin(tuple(np.add(labels.GetOrigin(), (7.0, 0.0, 0.0))))
    return stack.to_image(), labels, tos


def ui_label(module: str, label: str) -> str:
    """The text of QLabel ``label`` in the module's .ui file (the panel's field name), without its colon."""
    import xml.etree.ElementTree as ET

    ui = ROOT / "CardiacDiffusion" / module / "Resources" / "UI" / f"{module}.ui"
    widget = ET.parse(ui).getroot().find(f".//widget[@class='QLabel'][@name='{label}']")
    return widget.find("property[@name='text']/string").text.rstrip(":")


@pytest.mark.mrml
def test_both_modules_name_the_sax_labels_by_their_panel_field(mrml_scene, off_grid):
    """Was: 'SAX volume labels: ...' in Reconstruction, 'SAX image labels: ...' in ActivationMap, for the one panel
    field both modules label 'SAX labels' (labels drawn on another grid, refused by the child)."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.activation import ActivationJob
    from CardiacDiffusionLib.slicer_adapter.process import ProcessFailed
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    image, labels, tos = off_grid
    sax = mrml.volume_node_from_image(mrml_scene, image, "sax")
    drawn = mrml.volume_node_from_image(mrml_scene, labels, "drawn", labelmap=True)
    field = ui_label("Reconstruction", "saxLabelsLabel")
    assert field == ui_label("ActivationMap", "saxLabelsLabel") == "SAX labels"
    said = []
    for job in (ReconstructionJob(mrml_scene, sax, drawn, method="nearest"),
                ActivationJob(mrml_scene, drawn, tos_file=str(tos), sax_volume=sax)):  # fmt: skip
        with pytest.raises(ProcessFailed) as failed:
            job.start().wait(timeout=180)
        assert failed.value.returncode == 2
        said.append(failed.value.detail)
    for detail in said:
        assert detail.startswith(f"{field}: node 'drawn' is not on the image's grid"), said


def test_the_batch_script_names_the_files_given(off_grid, tmp_path):
    """Was: "SAX volume labels: node 'labels' is not on the image's grid": the batch user gave files and never saw a
    node. Now the file, as given."""
    image, labels, _ = off_grid
    sax, drawn = tmp_path / "sax.nrrd", tmp_path / "labels.nrrd"
    sitk.WriteImage(image, str(sax))
    sitk.WriteImage(labels, str(drawn))
    command = [sys.executable, str(ROOT / "scripts" / "slicer_batch.py"), "--sax", str(sax), "--sax-labels", str(drawn),
               "--method", "nearest", "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done
    said = done.stderr.splitlines()
    assert said == [f"error: SAX labels: {drawn} is not on the image's grid (SAX volume {sax}: the labels' size "
                    f"{labels.GetSize()}, origin, spacing or direction differ); give labels drawn on this series or "
                    "resample them to it first"], said
    assert "node" not in done.stdout + done.stderr


@pytest.mark.mrml
def test_the_frames_log_names_no_temporary_folder(mrml_scene, frames):  # noqa: F811
    """Was: the log ended 'frame 3: shape: 3 phases written to the module's temporary output folder (phase_00, ...;
    reconstruct_frames.json)', and each frame said 'wrote ... to the module's temporary output folder/phase_0K': a
    folder the panel user never sees, deleted when the job ends (and the run's line filed under one frame). The
    frames' results are the sequences the summary names."""
    from CardiacDiffusionLib.slicer_adapter.cine import FramesJob, frames_summary

    sequence, label_sequence, browser = make_cine(mrml_scene, frames)
    job = FramesJob(mrml_scene, browser.GetProxyNode(sequence), "all", browser.GetProxyNode(label_sequence),
                    method="shape", spacing=2.0)  # fmt: skip
    result = job.start().wait(timeout=300)
    assert result is not None and result.volumes.GetNumberOfDataNodes() == 3
    lines = job.log + frames_summary(result)
    assert not [line for line in lines if "temporary" in line or "written" in line or "phase_" in line], lines
    assert [line for line in job.log if line.startswith("frame 3")] == [
        "frame 3 of 3 (time 320 ms) of sequence 'cine': without SAX labels"], job.log
    assert lines[-4].startswith("new sequences 'cine shape' (3 frames) and 'cine shape labels' (2 frames) joined")
