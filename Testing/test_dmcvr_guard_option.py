"""dmcvr's roughness guard as users reach it: its re-decodes counted in progress and stopped by cancel, the
``--roughness-guard`` option of ``reconstruct`` and ``evaluate gap`` (refused by name, recorded in strict JSON, the
default bit-identical to an explicit 1.2) and the Slicer job's ``roughness_guard``.

A tiny untrained model (as in test_dmcvr_workflow.py) keeps most of it fast: its decodes are 0.83-0.99 times as rough
as their neighbours (measured), so a guard of 0.95 fires on some crops and not on others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import error_line, strict_json

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.dmcvr import DMCVRModel
from CardiacDiffusionLib.dmcvr import reconstruction as R
from CardiacDiffusionLib.dmcvr.ddim import Cancelled
from CardiacDiffusionLib.dmcvr.interpolate import interpolation_plan
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.models.store import list_models, save_model
from CardiacDiffusionLib.phantoms.mr import MRPhantom
from CardiacDiffusionLib.phantoms.scanner import acquire_sax, make_subject

ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"
needs_acdc = pytest.mark.skipif(not ACDC.is_dir(), reason="shared ACDC data missing")
needs_model = pytest.mark.skipif(not any(m["workflow"] == "dmcvr" for m in list_models()), reason="no DMCVR model")
TINY = {
    "z_dim": 16, "semantic_channels": [8, 8, 16, 16], "morph_features": [8, 8, 16, 16, 32, 8], "morph_channels": 4,
    "unet_channels": [16, 16, 32], "unet_attention_levels": [False, False, True], "num_head_channels": 16,
    "norm_num_groups": 8, "steps": 3,
}  # fmt: skip
FIRES = "0.95"  # re-decodes some of the tiny model's crops (ratios measured below)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, one_torch_thread) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_model(DMCVRModel(TINY), path, TINY, architecture="dmcvr", meta={"input": {"size": [32, 32], "spacing_mm": [4.0, 4.0]}})
    R.load_dmcvr.cache_clear()
    return path


@pytest.fixture(scope="module")
def phantom_stack():
    """An oblique phantom SAX stack (11 slices, 64 x 64 of 3.125 mm) with labels."""
    return acquire_sax(MRPhantom(5, "ED"), gap_mm=10.0, pixel_mm=3.125, matrix=64, noise_sigma=0.03)


@pytest.fixture(scope="module")
def phantom_files(phantom_stack, tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("sax")
    sitk.WriteImage(phantom_stack.to_image(), str(folder / "sax.nii.gz"))
    sitk.WriteImage(phantom_stack.to_image(labels=True), str(folder / "labels.nii.gz"))
    return str(folder / "sax.nii.gz"), str(folder / "labels.nii.gz")


def progress_events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"event": "progress"')]


# ---- the library: progress and cancel of the re-decodes ------------------------------------------------------------
def test_re_decodes_are_counted_in_progress_and_cancel_stops_them(phantom_stack, tiny_model, monkeypatch):
    stack = phantom_stack.subset([0, 1, 3, 6, 7])  # gaps 10, 20, 30, 10 mm
    targets = np.linspace(stack.positions[0], stack.positions[-1], 13)
    lo, hi, _ = interpolation_plan(stack.positions, targets)
    todo = np.nonzero(lo != hi)[0]  # 11 generated targets
    ratios = []
    measure = R.roughness_ratio
    monkeypatch.setattr(R, "roughness_ratio", lambda *a: ratios.append(measure(*a)) or ratios[-1])  # a spy: the real one
    options = dict(model=str(tiny_model), steps=2, device="cpu", batch_size=4)

    plain_calls, guarded_calls = [], []
    plain, _ = R.dmcvr(stack, targets, guard=np.inf, progress=lambda k, n: plain_calls.append((k, n)), **options)
    guarded, _ = R.dmcvr(stack, targets, guard=float(FIRES), progress=lambda k, n: guarded_calls.append((k, n)), **options)
    redo = np.nonzero(ratios[-1] > float(FIRES))[0]
    assert len(ratios) == 1 and len(todo) == 11 and len(redo) == 3  # measured 0.90-0.99; 0.971, 0.985, 0.971 fire

    # guard off: 5 encodes + 11 decodes in batches of 4 = 2 + 3 batches of 2 DDIM steps
    assert plain_calls == [(k, 10) for k in range(1, 11)]
    # guard on: the last decode step waits for the guard; then total grows once by one batch of 2 steps
    assert guarded_calls == [(k, 10) for k in range(1, 10)] + [(10, 12), (11, 12), (12, 12)]
    ks = [k for k, _ in guarded_calls]
    assert ks == sorted(ks) and [k == n for k, n in guarded_calls].count(True) == 1
    # only the re-decoded targets changed
    changed = np.nonzero(np.abs(guarded - plain).max(axis=(1, 2)) > 0)[0]
    assert np.array_equal(changed, todo[redo])

    seen = []

    def cancel_in_redecode() -> bool:  # the user presses cancel once the bar shows the re-decode
        return any(n > 10 for _, n in seen)

    with pytest.raises(Cancelled):
        R.dmcvr(stack, targets, guard=float(FIRES), progress=lambda k, n: seen.append((k, n)), cancel=cancel_in_redecode,
                **options)  # fmt: skip
    assert seen[-1] == (10, 12)  # stopped at the first re-decode step: nothing more was done or said
    seen.clear()
    R.dmcvr(stack, targets, guard=np.inf, progress=lambda k, n: seen.append((k, n)), cancel=cancel_in_redecode, **options)
    assert seen[-1] == (10, 10)  # without re-decodes the same cancel never fires


def test_acquired_targets_only_say_done_once(phantom_stack, tiny_model):
    """Nothing to decode (every target an acquired slice): the bar still ends at 100 %."""
    calls = []
    R.dmcvr(phantom_stack, phantom_stack.positions[:3], model=str(tiny_model), steps=2, device="cpu",
            progress=lambda k, n: calls.append((k, n)))  # fmt: skip
    assert calls == [(1, 1)]


# ---- reconstruct --roughness-guard -----------------------------------------------------------------------------------
def test_the_option_reaches_dmcvr_and_geometry_json_records_it(phantom_files, tiny_model, tmp_path, capsys):
    sax, labels = phantom_files
    run = ["reconstruct", "--method", "dmcvr", "--sax", sax, "--sax-labels", labels, "--model", str(tiny_model),
           "--steps", "2", "--device", "cpu", "--spacing", "2", "--progress", "json"]  # fmt: skip
    images, settings, events = {}, {}, {}
    for guard in ("off", FIRES):
        capsys.readouterr()
        assert main(run + ["--roughness-guard", guard, "--out", str(tmp_path / guard)]) == 0
        events[guard] = progress_events(capsys.readouterr().out)
        images[guard] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / guard / "reconstruction_image.nii.gz")))
        settings[guard] = strict_json((tmp_path / guard / "geometry.json").read_text())["settings"]
    assert settings["off"]["roughness_guard"] == "off" and settings[FIRES]["roughness_guard"] == 0.95
    # the stack's 11 acquired slices sit every 5th output slice (10 mm / 2 mm) and are kept; generated ones changed
    changed = np.nonzero(np.abs(images[FIRES] - images["off"]).max(axis=(1, 2)) > 0)[0]
    assert len(changed) > 0 and not np.any(changed % 5 == 0)
    # progress: 6 planned steps, 2 more for the re-decode (measured); the fraction drops once, k never
    assert [e["message"] for e in events["off"]][-1] == "dmcvr: DDIM step 6/6 (encode, then decode)"
    said = [e["message"] for e in events[FIRES]]
    assert said[-4:] == ["dmcvr: DDIM step 5/6 (encode, then decode)"] + [
        f"dmcvr: DDIM step {k}/8 (rough crops decoded again: roughness guard)" for k in (6, 7, 8)]
    fractions = [e["progress"] for e in events[FIRES]]
    assert fractions[-1] == 1.0 and sum(b < a for a, b in zip(fractions, fractions[1:])) == 1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "abc", "-inf", ""])
def test_bad_guard_values_are_refused_by_name_before_any_work(value, tmp_path, capsys):
    out = tmp_path / "out"
    said = f"error: --roughness-guard {value}: give a roughness ratio above 0"
    run = ["reconstruct", "--method", "dmcvr", "--sax", str(tmp_path / "never-read.nii.gz"), f"--roughness-guard={value}",
           "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert error_line(run, capsys).startswith(said)
    gap = ["evaluate", "gap", "--data", str(tmp_path / "never-read"), "--methods", "dmcvr", f"--roughness-guard={value}"]
    assert error_line(gap, capsys).startswith(said)
    assert not out.exists()


def test_other_methods_refuse_the_guard(tmp_path, capsys):
    run = ["reconstruct", "--method", "shape", "--sax", str(tmp_path / "never-read.nii.gz"), "--roughness-guard", "1.2",
           "--out", str(tmp_path / "out")]  # fmt: skip
    assert error_line(run, capsys) == ("error: --roughness-guard: options of --method dmcvr; shape has none "
                                       "(leave them out)")  # fmt: skip
    gap = ["evaluate", "gap", "--data", str(tmp_path), "--methods", "linear", "--roughness-guard", "off"]
    assert error_line(gap, capsys).startswith("error: --roughness-guard: only dmcvr uses these")


@needs_model
def test_the_default_run_is_an_explicit_1_2_bit_for_bit_where_the_guard_fires(tmp_path, capsys, one_torch_thread):
    """MR phantom 0's basal slices: the shipped model's mid-gap decodes there are 1.53-1.71 times as rough as their
    neighbours (test_dmcvr_robustness.py), so the default guard re-decodes them."""
    stack = make_subject(0).sax.subset(np.arange(1, 4))
    sitk.WriteImage(stack.to_image(), str(tmp_path / "sax.nii.gz"))
    sitk.WriteImage(stack.to_image(labels=True), str(tmp_path / "labels.nii.gz"))
    run = ["reconstruct", "--method", "dmcvr", "--sax", str(tmp_path / "sax.nii.gz"), "--sax-labels",
           str(tmp_path / "labels.nii.gz"), "--device", "cpu", "--spacing", "5", "--progress", "json"]  # fmt: skip
    arrays = {}
    for name, extra in (("default", []), ("explicit", ["--roughness-guard", "1.2"])):
        capsys.readouterr()
        assert main(run + extra + ["--out", str(tmp_path / name)]) == 0
        last = progress_events(capsys.readouterr().out)[-1]
        assert last["progress"] == 1.0 and last["message"] == "dmcvr: DDIM step 75/75 (rough crops decoded again: roughness guard)"
        assert strict_json((tmp_path / name / "geometry.json").read_text())["settings"]["roughness_guard"] == 1.2
        arrays[name] = [sitk.ReadImage(str(tmp_path / name / f"reconstruction_{kind}.nii.gz")) for kind in ("image", "labels")]
    for default, explicit in zip(*arrays.values()):
        assert np.array_equal(sitk.GetArrayFromImage(default), sitk.GetArrayFromImage(explicit))
        assert default.GetOrigin() == explicit.GetOrigin() and default.GetSpacing() == explicit.GetSpacing()


# ---- evaluate gap --roughness-guard -----------------------------------------------------------------------------------
@needs_acdc
def test_the_gap_protocol_passes_the_guard_and_records_it(tiny_model, tmp_path, capsys):
    """ACDC 061 frame 01: the tiny model's 4 generated crops are 0.87-0.97 times as rough as their neighbours."""
    gap = ["evaluate", "gap", "--data", str(ACDC), "--patients", "61", "--limit", "1", "--methods", "dmcvr",
           "--model", str(tiny_model), "--steps", "2", "--device", "cpu"]  # fmt: skip
    tables = {}
    for guard in ("off", FIRES, None):
        out = tmp_path / f"{guard}.json"
        assert main(gap + (["--roughness-guard", guard] if guard else []) + ["--out", str(out)]) == 0
        tables[guard] = strict_json(out.read_text())
    assert tables["off"]["settings"]["dmcvr"]["roughness_guard"] == "off"
    assert tables[FIRES]["settings"]["dmcvr"]["roughness_guard"] == 0.95
    assert "roughness_guard" not in tables[None]["settings"]["dmcvr"]  # not given: as the other options
    assert tables[FIRES]["dmcvr"]["psnr"] != tables["off"]["dmcvr"]["psnr"]
    assert tables[None]["dmcvr"]["psnr"] == tables["off"]["dmcvr"]["psnr"]  # 1.2 fires on none of them


# ---- the Slicer job ---------------------------------------------------------------------------------------------------
@pytest.mark.mrml
def test_the_reconstruction_job_passes_the_guard_to_the_child(mrml_scene, phantom_stack, tiny_model, tmp_path,
                                                              monkeypatch):  # fmt: skip
    from helpers import load_panel

    from CardiacDiffusionLib.cli.main import build_parser
    from CardiacDiffusionLib.cli.reconstruct import roughness_guard
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    sax = mrml.volume_node_from_image(mrml_scene, phantom_stack.to_image(), "SAX")
    labels = mrml.volume_node_from_image(mrml_scene, phantom_stack.to_image(labels=True), "SAX labels", labelmap=True)

    def arguments(method, guard):
        folder = tmp_path / f"{method}-{guard}"
        folder.mkdir()
        return ReconstructionJob(mrml_scene, sax, method=method, roughness_guard=guard)._export(folder)

    assert arguments("dmcvr", 0.8)[-2:] == ["--roughness-guard", "0.8"]
    assert arguments("dmcvr", float("inf"))[-2:] == arguments("dmcvr", "off")[-2:] == ["--roughness-guard", "off"]
    assert "--roughness-guard" not in arguments("dmcvr", None) and "--roughness-guard" not in arguments("shape", 0.8)
    parsed = build_parser().parse_args(["reconstruct", *arguments("dmcvr", 1e-3), "--out", str(tmp_path / "out")])
    assert roughness_guard(parsed.roughness_guard) == 1e-3  # the command reads what the job writes
    for bad in (0, -1.0, float("nan"), "abc", True):  # refused before a child starts, as the command would
        with pytest.raises(InputError, match="roughness_guard must be a ratio above 0"):
            ReconstructionJob(mrml_scene, sax, method="dmcvr", roughness_guard=bad)
    # the module's logic passes it on (a bad value is the job's refusal, before any child)
    logic = load_panel("Reconstruction", monkeypatch, mrml_scene).ReconstructionLogic()
    with pytest.raises(InputError, match="roughness_guard must be a ratio above 0"):
        logic.run(sax, labels, method="dmcvr", roughness_guard=-2.0)

    # a child run: the guard reached dmcvr (its re-decode is in the progress) and geometry.json
    reports = []
    job = ReconstructionJob(mrml_scene, sax, labels, method="dmcvr", steps=2, device="cpu", model=str(tiny_model),
                            spacing=2.0, roughness_guard=float(FIRES), keep_files=True)  # fmt: skip
    try:
        job.start(lambda fraction, text: reports.append((fraction, text)))
        assert job.wait(timeout=300) is not None
        assert strict_json((job.folder / "out" / "geometry.json").read_text())["settings"]["roughness_guard"] == 0.95
    finally:
        import shutil

        shutil.rmtree(job.folder, ignore_errors=True)
    assert any("rough crops decoded again: roughness guard" in text for _, text in reports)
