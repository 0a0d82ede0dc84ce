"""Review polish: a cancelled module job says nothing after "cancelled" (the real child, lines queued at cancel);
`reconstruct`'s closing line comes after its removals of an earlier run's outputs; `segment` calls a multi-label map
or a scaled mask a label map, not an MR image; `--progress json`'s stdout contract (JSON lines start with `{`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CT = SHARED / "totalseg-ct"
needs_ct = pytest.mark.skipif(not (CT / "heart.nii.gz").is_file(), reason="shared CT data not present")


# ---- 1. cancel: no work line after "cancelled" ------------------------------------------------------------------------
@pytest.mark.mrml
def test_lines_queued_at_cancel_are_said_before_cancelled(mrml_scene):
    """A real `reconstruct --method dmcvr` child with 400 DDIM steps; the panel's timer has not drained its lines when
    the user cancels. Those lines come before "cancelled" (the panel's log showed DDIM steps after it)."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob
    from test_mrml_adapter import sax_images

    image, labels = sax_images()
    sax = mrml.volume_node_from_image(mrml_scene, image, "SAX")
    label_node = mrml.volume_node_from_image(mrml_scene, labels, "SAX labels", labelmap=True)
    count, reports = mrml_scene.GetNumberOfNodes(), []
    job = ReconstructionJob(mrml_scene, sax, label_node, method="dmcvr", steps=400, device="cpu")
    job.start(lambda fraction, text: reports.append((fraction, text)))
    deadline = time.monotonic() + 120
    while job.child._queue.qsize() < 5 and time.monotonic() < deadline:  # the child works; nobody polls
        assert not job.child.finished
        time.sleep(0.1)
    assert job.child._queue.qsize() >= 5
    job.cancel()
    with pytest.raises(InputError, match="^the dmcvr reconstruction was cancelled$"):
        job.finish()
    texts = [text for _, text in reports]
    assert texts[-1] == "cancelled" and texts.count("cancelled") == 1, texts[-5:]
    steps = [t for t in texts if t.startswith("dmcvr: DDIM step")]
    assert len(steps) >= 5 and steps[0].startswith("dmcvr: DDIM step 1/1200"), steps[:3]
    assert job.child.returncode is not None and mrml_scene.GetNumberOfNodes() == count


# ---- 2. reconstruct: the closing line is the last -------------------------------------------------------------------
@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> tuple[str, str]:
    """A 3-phase 4D NIfTI cine of the MR phantom (ED, ES, ED) and its labels."""
    from CardiacDiffusionLib.phantoms.scanner import make_subject

    folder = tmp_path_factory.mktemp("cine")
    ed, es = (make_subject(seed=3, phase=p, matrix=32, pixel_mm=144 / 32).sax for p in ("ED", "ES"))
    sitk.WriteImage(sitk.JoinSeries([s.to_image() for s in (ed, es, ed)]), str(folder / "cine.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([s.to_image(labels=True) for s in (ed, es, ed)]), str(folder / "labels.nii.gz"))
    return str(folder / "cine.nii.gz"), str(folder / "labels.nii.gz")


def test_removals_of_an_earlier_run_are_said_before_the_closing_line(cine, tmp_path, capsys):
    image, labels = cine
    out = tmp_path / "out"
    run = ["reconstruct", "--method", "shape", "--spacing", "2", "--sax", image, "--sax-labels", labels, "--out", str(out)]
    assert main([*run, "--phase", "all"]) == 0
    capsys.readouterr()
    assert main([*run, "--phase", "1"]) == 0  # single phase into the multi-phase run's folder
    lines = capsys.readouterr().out.splitlines()
    removed = [f"removed phase_0{k} of an earlier multi-phase run in {out} (this run does not make it)" for k in range(3)]
    removed.append(f"removed reconstruct_frames.json of an earlier multi-phase run in {out} (this run does not make it)")
    assert lines[-5:-1] == removed, lines
    assert lines[-1] == f"shape: wrote reconstruction_image.nii.gz, reconstruction_labels.nii.gz, geometry.json to {out}"
    assert sorted(p.name for p in out.iterdir()) == ["geometry.json", "reconstruction_image.nii.gz",
                                                     "reconstruction_labels.nii.gz"]  # fmt: skip
    assert main([*run, "--phase", "0,2"]) == 0  # and a multi-phase run into the single-phase run's folder
    lines = capsys.readouterr().out.splitlines()
    said = f"of an earlier single-phase run in {out} (this run writes phase folders)"
    names = ("reconstruction_image.nii.gz", "reconstruction_labels.nii.gz", "geometry.json")
    assert lines[-4:-1] == [f"removed {name} {said}" for name in names], lines
    assert lines[-1] == f"shape: 2 phases written to {out} (phase_00, phase_02; reconstruct_frames.json)"


# ---- 3. segment: a label map is said to be one ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctseg_model(tmp_path_factory) -> Path:
    """An untrained `ctseg_unet` recording the grid of `train ctseg`'s defaults: enough to reach the input checks."""
    import torch

    from CardiacDiffusionLib.ldm.seg_tasks import ARCHITECTURE, N_CLASSES, CTSegData, build_seg_unet
    from CardiacDiffusionLib.models.store import save_model

    torch.manual_seed(0)
    config = {"out_channels": N_CLASSES, "features": [4, 8, 8, 16, 16, 4], "input": CTSegData().grid()}
    path = tmp_path_factory.mktemp("ctseg") / "untrained.safetensors"
    save_model(build_seg_unet(config), path, config, architecture=ARCHITECTURE)
    return path


def _segment_refusal(capsys, model: Path, image: sitk.Image, path: Path) -> str:
    sitk.WriteImage(image, str(path))
    before = path.read_bytes()
    assert main(["segment", "--model", str(model), "--image", str(path), "--device", "cpu",
                 "--out", str(path.parent / "out")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --image "), err
    assert path.read_bytes() == before and not (path.parent / "out" / "labels.nii.gz").exists()
    return err[0]


@needs_ct
def test_a_multi_label_map_is_refused_as_a_label_map(ctseg_model, tmp_path, capsys):
    """The shared CT's heart mask times 20 (0/20, uint8), and a float32 map of 12 labels (the heart's slices in
    12 slabs): both said to be label maps (they were called "no air, lung or fat ... an MR image")."""
    heart = sitk.ReadImage(str(CT / "heart.nii.gz"))
    mask = sitk.GetArrayFromImage(heart)
    assert set(np.unique(mask).tolist()) == {0, 1}
    scaled = sitk.GetImageFromArray((mask * 20).astype(np.uint8))
    scaled.CopyInformation(heart)
    said = _segment_refusal(capsys, ctseg_model, scaled, tmp_path / "heart_x20.nii.gz")
    assert said == (f"error: --image {tmp_path / 'heart_x20.nii.gz'}: holds only 2 whole numbers, 0..20 (a label map "
                    "or mask?); give the CT image in Hounsfield units")  # fmt: skip
    z = np.nonzero(mask.any(axis=(1, 2)))[0]  # the heart's slices, in 12 slabs numbered 1..12
    slabs = 1 + (np.arange(mask.shape[0]) - z[0]).clip(0)[:, None, None] * 12 // (z[-1] - z[0] + 1)
    many = sitk.GetImageFromArray((mask * slabs).astype(np.float32))
    many.CopyInformation(heart)
    said = _segment_refusal(capsys, ctseg_model, many, tmp_path / "labels.nrrd")
    assert said.endswith(": holds only 13 whole numbers, 0..12 (a label map or mask?); give the CT image in Hounsfield "
                         "units"), said  # fmt: skip


@needs_ct
def test_images_that_are_not_labels_keep_their_own_refusal(ctseg_model, tmp_path, capsys):
    """A CT without its rescale to HU (the shared CT + 1064: 3773 whole numbers >= 0) and the Sunnybrook MR (701
    whole numbers 0..737) are still "no air, lung or fat"; the shared CT in HU passes both checks."""
    from CardiacDiffusionLib.cli.segment import refuse_label_map, refuse_non_ct
    from CardiacDiffusionLib.io.volumes import read_image

    ct = sitk.ReadImage(str(CT / "ct_cropped.nii.gz"))
    refuse_label_map(ct, "ct")
    refuse_non_ct(ct, "ct")
    raw = sitk.Cast(ct, sitk.sitkInt32) + 1064
    assert "no air, lung or fat" in _segment_refusal(capsys, ctseg_model, raw, tmp_path / "raw.nii.gz")
    dicom = SHARED / "sunnybrook-SC-HF-I-1" / "dicom"
    series = sorted({p.parent for p in dicom.rglob("*.dcm")})
    mr = read_image(str(series[0]), name="--image")
    refuse_label_map(mr, "mr")
    with pytest.raises(InputError, match="no air, lung or fat"):
        refuse_non_ct(mr, "mr")


# ---- 4. --progress json: JSON lines and lines for people on one stdout ----------------------------------------------
def _start(command: list[str]) -> subprocess.Popen:
    """Start the command as Slicer does (a child, its real stdout, `--progress json`)."""
    return subprocess.Popen([sys.executable, "-m", "CardiacDiffusionLib.cli.main", *command, "--progress", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


def _stdout_contract(child: subprocess.Popen) -> tuple[list[dict], list[str]]:
    """(The child's events, its plain lines) once it ends. Every line is either a JSON object with an "event" or does
    not start with "{"."""
    try:
        stdout, stderr = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, stderr[-2000:]
    events, plain = [], []
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            assert isinstance(record, dict) and "event" in record, line
            events.append(record)
        else:
            plain.append(line)
    return events, plain


def test_progress_json_stdout_is_json_events_and_plain_lines(tmp_path):
    """Three commands' children (reconstruct dmcvr, lma, sample), run at once to share the cores."""
    from CardiacDiffusionLib.phantoms.mr import MRPhantom
    from CardiacDiffusionLib.phantoms.scanner import acquire_lax, acquire_sax
    from helpers import lma_phantom_files

    stack = acquire_sax(MRPhantom(3, "ED"), matrix=48, pixel_mm=3.0)
    sitk.WriteImage(stack.to_image(), str(tmp_path / "sax.nii.gz"))
    sitk.WriteImage(stack.to_image(labels=True), str(tmp_path / "sax_labels.nii.gz"))
    sitk.WriteImage(acquire_lax(MRPhantom(3, "ED"), "4ch", pixel_mm=3.0, matrix=48)[1], str(tmp_path / "4ch.nii.gz"))
    (tmp_path / "lma").mkdir()
    folder, _ = lma_phantom_files(tmp_path / "lma")
    children = [_start(["reconstruct", "--method", "dmcvr", "--steps", "2", "--device", "cpu",
                        "--sax", str(tmp_path / "sax.nii.gz"), "--sax-labels", str(tmp_path / "sax_labels.nii.gz"),
                        "--lax-labels", str(tmp_path / "4ch.nii.gz"), "--out", str(tmp_path / "rec")]),
                _start(["lma", "--slices", str(folder / "labels.nii.gz"), "--strain", str(folder / "strain.npy"),
                        "--out", str(tmp_path / "lma_out")]),
                _start(["sample", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "pairs")])]  # fmt: skip
    try:
        events, plain = _stdout_contract(children[0])
        assert events and events[-1]["progress"] == 1.0 and all(e["event"] == "progress" for e in events)
        assert any("LAX Dice" in line for line in plain) and plain[-1].startswith("dmcvr: wrote "), plain
        events, plain = _stdout_contract(children[1])
        assert len(events) >= 2 and [e["event"] for e in events] == ["progress"] * len(events)  # its stages
        assert events[-1]["progress"] == 1.0  # was 0.9 ("writing the outputs"): the bar never filled
        assert any(line.startswith("decision support: suggested LV lead segment") for line in plain), plain
        events, plain = _stdout_contract(children[2])
        assert events and events[-1]["progress"] == 1.0, plain
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
