"""``reconstruct --phase all|0,2,3``: several phases of a cine in one run equal single-phase runs of the same phases
(arrays, geometry.json), progress over all frames rises, bad selections are refused in one line, a bad frame and a
cancel (SIGTERM) leave no half-written frame folder; the Slicer "All cine frames" job runs one child for all frames
and its cancel adds nothing to a real slicer-core scene."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = (0.0, 0.5, 1.0, 0.25)  # ES share of each phase's pixels: ED, a blend, ES, another blend


def phantom_frames(matrix: int = 48):
    from CardiacDiffusionLib.phantoms.scanner import make_subject

    ed, es = (make_subject(seed=3, phase=p, matrix=matrix, pixel_mm=144 / matrix) for p in ("ED", "ES"))
    stacks = [dataclasses.replace(ed.sax, pixels=(1 - w) * ed.sax.pixels + w * es.sax.pixels, labels=None)
              for w in WEIGHTS]  # fmt: skip
    return ed, es, stacks


@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> dict[str, Path]:
    """A 4-phase DICOM cine (one series, trigger times 0-120 ms) of the MR phantom, ED and ES SAX labels, ED 4ch LAX
    labels, and the same phases as a 4D NIfTI file."""
    from pydicom.uid import generate_uid

    from CardiacDiffusionLib.phantoms.scanner import write_sax_dicom

    folder = tmp_path_factory.mktemp("cine")
    ed, es, stacks = phantom_frames()
    uid = generate_uid(entropy_srcs=["test_reconstruct_frames"])
    for k, stack in enumerate(stacks):
        write_sax_dicom(stack, folder / "dicom", trigger_time_ms=40.0 * k, series_uid=uid, first_instance=1 + k * stack.n)
    paths = {"dicom": folder / "dicom"}
    for name, image in (("ed", ed.sax.to_image(labels=True)), ("es", es.sax.to_image(labels=True)),
                        ("lax", ed.lax_labels["4ch"])):  # fmt: skip
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    paths["4d"] = folder / "cine4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([s.to_image() for s in stacks]), str(paths["4d"]))
    return paths


def run(*arguments, capsys=None) -> tuple[int, list[str], list[str]]:
    code = main(["reconstruct", *map(str, arguments)])
    said = capsys.readouterr() if capsys is not None else None
    return code, *((said.out.splitlines(), said.err.splitlines()) if said else ([], []))


def arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def geometry(folder: Path, image: str = "reconstruction_image.nii.gz") -> tuple:
    read = sitk.ReadImage(str(folder / image))
    return read.GetOrigin(), read.GetSpacing(), read.GetDirection(), read.GetSize()


def test_phases_in_one_run_equal_single_phase_runs(cine, tmp_path, capsys):
    out = tmp_path / "frames"
    code, lines, _ = run("--method", "shape", "--sax", cine["dicom"], "--phase", "0,2,3", "--frame-labels",
                         f"0={cine['ed']}", f"2={cine['es']}", "--lax-labels", cine["lax"], "--lax-phase", 0,
                         "--spacing", 2, "--out", out, "--progress", "json", capsys=capsys)  # fmt: skip
    assert code == 0
    summary = json.loads((out / "reconstruct_frames.json").read_text())
    assert summary["status"] == "complete" and summary["phases"] == [0, 2, 3]
    assert [(f["folder"], f["trigger_time_ms"], f["labels_made"]) for f in summary["frames"]] == [
        ("phase_00", 0.0, True), ("phase_02", 80.0, True), ("phase_03", 120.0, False)]
    assert sorted(p.name for p in out.iterdir()) == ["phase_00", "phase_02", "phase_03", "reconstruct_frames.json"]
    for k, labels in ((0, cine["ed"]), (2, cine["es"]), (3, None)):
        single = tmp_path / f"single_{k}"
        given = ["--sax-labels", labels] if labels else []
        lax = ["--lax-labels", cine["lax"]] if k == 0 else []  # the LAX labels are ED's: phase 0 only is checked
        assert run("--method", "shape", "--sax", cine["dicom"], "--phase", k, *given, *lax, "--spacing", 2, "--out",
                   single, capsys=capsys)[0] == 0  # fmt: skip
        frame = out / f"phase_{k:02d}"
        assert sorted(p.name for p in frame.iterdir()) == sorted(p.name for p in single.iterdir())
        assert ({"lax_dice.json", "lax_dice_baselines.json"} <= {p.name for p in frame.iterdir()}) == (k == 0)
        got, want = arrays(frame), arrays(single)
        assert got.keys() == want.keys() and len(got) == (2 if labels else 1)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
        assert geometry(frame) == geometry(single)
        record = json.loads((frame / "geometry.json").read_text())
        assert record == json.loads((single / "geometry.json").read_text()) and record["input"]["phase"] == k
        for name in ("geometry.json", "lax_dice.json"):  # the same bytes
            if (single / name).exists():
                assert (frame / name).read_bytes() == (single / name).read_bytes()
    # the phases differ: a run that read the wrong one could not pass
    assert np.abs(arrays(out / "phase_00")["reconstruction_image.nii.gz"]
                  - arrays(out / "phase_02")["reconstruction_image.nii.gz"]).mean() > 0.01  # fmt: skip

    events = [json.loads(line) for line in lines if line.startswith("{")]
    fractions = [e["progress"] for e in events]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert [e["folder"] for e in events if "folder" in e] == ["phase_00", "phase_02", "phase_03"]
    for e in events:
        assert e["message"].startswith(f"phase {e['phase']} ({e['frame'] + 1} of 3 in this run): ")
        assert e["progress"] == pytest.approx((e["frame"] + e["frame_progress"]) / 3, abs=1e-4)


def test_a_4d_file_and_its_4d_labels(cine, tmp_path, capsys):
    """A 4D NIfTI cine: --phase all gives each phase as --phase k would; a 4D label file labels every phase."""
    labels4d = tmp_path / "labels4d.nii.gz"
    ed, es = (sitk.ReadImage(str(cine[n])) for n in ("ed", "es"))
    sitk.WriteImage(sitk.JoinSeries([ed, es, es, ed]), str(labels4d))
    assert run("--sax", cine["4d"], "--phase", "all", "--sax-labels", labels4d, "--spacing", 2, "--out",
               tmp_path / "all", capsys=capsys)[0] == 0  # fmt: skip
    assert run("--sax", cine["4d"], "--phase", 2, "--sax-labels", labels4d, "--spacing", 2, "--out",
               tmp_path / "one", capsys=capsys)[0] == 0  # fmt: skip
    summary = json.loads((tmp_path / "all" / "reconstruct_frames.json").read_text())
    assert [f["folder"] for f in summary["frames"]] == ["phase_00", "phase_01", "phase_02", "phase_03"]
    got, want = arrays(tmp_path / "all" / "phase_02"), arrays(tmp_path / "one")
    assert len(want) == 2 and all(np.array_equal(got[n], want[n]) for n in want)


def test_bad_selections_are_refused_in_one_line(cine, tmp_path, capsys):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "CardiacDiffusionLib.cli.main", "reconstruct", "--sax", str(cine["dicom"]),
               "--phase", "0,9", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"error: --phase 0,9: phase 9 does not exist; --sax {cine['dicom']} has "
                                        "phases 0..3 (0-based; `inspect` lists them): give each once, or all"]  # fmt: skip
    refusals = {
        ("--phase", "1,1"): "--phase 1,1: phase 1 is given twice",
        ("--phase", "ED"): "--phase ED: give one phase number, all, or a comma list such as 0,5,12",
        ("--phase", "all", "--sax-labels", cine["ed"]): f"--sax-labels {cine['ed']}: one 3D label volume for several phases",
        ("--phase", "0,1", "--frame-labels", f"2={cine['es']}"): f"--frame-labels 2={cine['es']}: phase 2 is not among --phase 0,1",
        ("--phase", "0,1", "--frame-labels", "0"): "--frame-labels 0: give PHASE=FILE",
        ("--phase", "1", "--frame-labels", f"1={cine['es']}"): "--frame-labels: for several phases",
    }  # fmt: skip
    for arguments, said in refusals.items():
        code, lines, errors = run("--sax", cine["dicom"], *arguments, "--out", out, capsys=capsys)
        assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {said}"), (arguments, errors)
    manifest = tmp_path / "frames.json"
    manifest.write_text(json.dumps({"frames": [{"image": "a.nrrd"}]}))
    code, _, errors = run("--sax", manifest, "--phase", "all", "--out", out, capsys=capsys)
    assert code == 2 and errors == [f"error: --sax {manifest}: not a frames manifest; give {{\"frames\": [{{\"sax\": FILE, "
                                    "\"sax_labels\": FILE (optional)}, ...]} (paths relative to the manifest)"]  # fmt: skip
    assert not out.exists()  # refused before anything was written


def test_a_bad_frame_is_named_and_leaves_no_half_frame(cine, tmp_path, capsys):
    """Labels of another grid on phase 2: the error names that phase; phase 0 is complete, phase 2 left nothing."""
    other = tmp_path / "other.nii.gz"
    sitk.WriteImage(sitk.Image(20, 20, 4, sitk.sitkUInt8) + 1, str(other))
    out = tmp_path / "out"
    code, _, errors = run("--sax", cine["dicom"], "--phase", "0,2", "--frame-labels", f"2={other}", "--out", out,
                          capsys=capsys)  # fmt: skip
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: phase 2 (2 of 2 in this run): --sax labels")
    assert sorted(p.name for p in out.iterdir()) == ["phase_00", "reconstruct_frames.json"]
    summary = json.loads((out / "reconstruct_frames.json").read_text())
    assert summary["status"] == "failed" and [f["phase"] for f in summary["frames"]] == [0]
    assert summary["error"] == errors[0][len("error: "):]


def test_sigterm_cancels_between_complete_frames(tmp_path):
    """SIGTERM during a 40-phase run: exit 130, 'cancelled'; every frame folder left is listed complete, with its
    outputs; no partial folder."""
    _, _, stacks = phantom_frames(matrix=32)
    path = tmp_path / "long.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([s.to_image() for s in stacks * 10]), str(path))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "CardiacDiffusionLib.cli.main", "reconstruct", "--sax", str(path), "--phase",
               "all", "--spacing", "2", "--out", str(out), "--progress", "json"]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        for line in child.stdout:  # the first frame is done: the run is under way
            if '"folder"' in line:
                break
        time.sleep(0.3)
        child.send_signal(signal.SIGTERM)
        _, errors = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130 and errors.splitlines()[-1] == "cancelled"
    summary = json.loads((out / "reconstruct_frames.json").read_text())
    done = [f["folder"] for f in summary["frames"]]
    assert summary["status"] == "cancelled" and 1 <= len(done) < 40
    assert sorted(p.name for p in out.iterdir()) == sorted([*done, "reconstruct_frames.json"])  # no .partial folder
    for folder in done:
        assert {p.name for p in (out / folder).iterdir()} == {"reconstruction_image.nii.gz", "geometry.json"}


def test_dmcvr_phases_in_one_run_equal_single_runs(cine, tmp_path, capsys):
    """dmcvr (2 DDIM steps): the model loads once for both phases; each phase as its own run makes."""
    assert run("--method", "dmcvr", "--sax", cine["dicom"], "--phase", "1,2", "--frame-labels", f"2={cine['es']}",
               "--steps", 2, "--out", tmp_path / "both", "--progress", "json", capsys=capsys)[0] == 0  # fmt: skip
    for k, given in ((1, []), (2, ["--sax-labels", cine["es"]])):
        assert run("--method", "dmcvr", "--sax", cine["dicom"], "--phase", k, *given, "--steps", 2, "--out",
                   tmp_path / f"one_{k}", capsys=capsys)[0] == 0  # fmt: skip
        got, want = arrays(tmp_path / "both" / f"phase_{k:02d}"), arrays(tmp_path / f"one_{k}")
        assert len(want) == 2 and all(np.array_equal(got[n], want[n]) for n in want)  # dmcvr labels phase 1 itself
        assert (tmp_path / "both" / f"phase_{k:02d}" / "geometry.json").read_bytes() == \
            (tmp_path / f"one_{k}" / "geometry.json").read_bytes()  # fmt: skip


# ---- the Slicer job: one child for all frames; cancel adds nothing ---------------------------------------------
@pytest.mark.mrml
def test_slicer_frames_job_runs_one_child_and_cancel_adds_nothing(mrml_scene):
    from CardiacDiffusionLib.slicer_adapter.cine import FramesJob
    from test_cine_sequences import items_state, make_cine, select

    ed, es, stacks = phantom_frames()
    frames = [(s.to_image(), {0: ed.sax, 2: es.sax}[k].to_image(labels=True) if k in (0, 2) else None)
              for k, s in enumerate(stacks)]  # fmt: skip
    cine, labels, browser = make_cine(mrml_scene, frames)
    select(browser, 1)
    proxy, label_proxy = browser.GetProxyNode(cine), browser.GetProxyNode(labels)
    nodes, before = mrml_scene.GetNumberOfNodes(), items_state(cine, labels)

    job = FramesJob(mrml_scene, proxy, [0, 1, 2], label_proxy, method="shape", spacing=2.0).start()
    child = job.job
    command = child.child.command
    assert command[command.index("--phase") + 1] == "all" and command[command.index("--sax") + 1].endswith("frames.json")
    manifest = json.loads((child.folder / "frames.json").read_text())
    assert [sorted(f) for f in manifest["frames"]] == [["sax", "sax_labels"], ["sax"], ["sax", "sax_labels"]]
    result = job.wait(timeout=300)
    assert job.job is child and result.volumes.GetNumberOfDataNodes() == 3 and result.labels.GetNumberOfDataNodes() == 2
    assert not child.folder.exists()
    added = mrml_scene.GetNumberOfNodes() - nodes
    assert added > 0

    nodes = mrml_scene.GetNumberOfNodes()
    job = FramesJob(mrml_scene, proxy, "all", label_proxy, method="shape", spacing=2.0).start()
    deadline = time.monotonic() + 300
    while job._current is None:  # the child has started on the first frame
        assert time.monotonic() < deadline
        job.poll()
        time.sleep(0.05)
    job.cancel()
    assert job.result is None and not job.running and job.job.child.finished and not job.job.folder.exists()
    with pytest.raises(Exception, match=r"^frame \d of 4: the shape reconstruction was cancelled$"):
        job.poll()
    assert mrml_scene.GetNumberOfNodes() == nodes and items_state(cine, labels) == before
    assert browser.GetSelectedItemNumber() == 1 and browser.GetNumberOfSynchronizedSequenceNodes() == 3
