"""Output files and CLI corners: every JSON the package writes is strict (RFC 8259: no NaN/Infinity), checked on
real runs whose numbers are undefined somewhere; `sample` names its files; a bad OMP_NUM_THREADS is said in one
line; `--device` given to a method that runs on the CPU is said, not an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import strict_json
from safetensors import safe_open

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.utils import device as D
from CardiacDiffusionLib.utils.jsonfile import (
    dumps,
    loads_strict,
    non_finite,
    write_json,
)


def strict_file(path: Path):
    return strict_json(Path(path).read_text())


# ---- the shared writer -----------------------------------------------------------------------------------------
def test_writer_refuses_nan_by_its_place_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "table.json"
    good = {"scores": [np.float32(0.5), np.int64(3)], "grid": np.arange(3), "ok": np.bool_(True)}
    write_json(path, good)
    assert strict_file(path) == {"scores": [0.5, 3], "grid": [0, 1, 2], "ok": True}
    before = path.read_bytes()
    bad = {"segments": [{"tos_ms": 1.0}, {"tos_ms": float("nan")}], "psnr": float("inf")}
    assert non_finite(bad) == "segments[1].tos_ms = nan"
    with pytest.raises(ValueError, match=r"table.json: segments\[1\].tos_ms = nan; JSON has no NaN"):
        write_json(path, bad)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]
    with pytest.raises(ValueError, match="psnr = inf"):
        dumps({"psnr": np.float64("inf")})
    with pytest.raises(ValueError, match="NaN is not JSON"):
        loads_strict('{"psnr": NaN}')


# ---- reconstruct: lax_dice.json with a label the plane lacks, geometry.json; --device for a CPU method ----------
@pytest.fixture(scope="module")
def mr(tmp_path_factory):
    out = tmp_path_factory.mktemp("mr")
    assert main(["phantom", "--kind", "mr", "--seed", "3", "--matrix", "96", "--no-dicom", "--out", str(out)]) == 0
    return out


def test_reconstruct_files_are_strict_and_a_label_the_plane_lacks_is_null(mr, tmp_path, capsys):
    """The 2ch plane has no RV: its RV Dice is undefined, written null (not NaN); the other planes' RV a number.
    `--device cuda` (the panels pass their device to every method) is said in one line: shape runs on the CPU."""
    capsys.readouterr()
    lax = [str(mr / f"lax_{v}_labels.nii.gz") for v in ("2ch", "4ch")]
    argv = ["reconstruct", "--method", "shape", "--sax", str(mr / "sax_image.nii.gz"), "--sax-labels",
            str(mr / "sax_labels.nii.gz"), "--lax-labels", *lax, "--out", str(tmp_path), "--device", "cuda"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if "--device" in line] == [
        "note: --device cuda: --method shape runs on the CPU (only dmcvr uses the device)"]  # fmt: skip
    dice = strict_file(tmp_path / "lax_dice.json")
    assert dice["lax_2ch_labels.nii.gz"]["RV"] is None and dice["lax_2ch_labels.nii.gz"]["LV"] > 0.9
    assert dice["lax_4ch_labels.nii.gz"]["RV"] > 0.8
    geometry = strict_file(tmp_path / "geometry.json")
    assert geometry["method"] == "shape" and geometry["output"]["spacing_mm"][2] == 1.0
    assert strict_file(mr / "truth.json")["seed"] == 3
    # an unknown device is refused by name, also for a method that does not use it
    assert main([*argv[:-1], "gpu0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --device gpu0: unknown device")


# ---- lma.json: a segment no mesh point falls in -------------------------------------------------------------------
def test_lma_json_segment_without_points_is_null(tmp_path, capsys):
    """--apex on the stack's last slice, past the myocardium (accepted: within the image): the apex segment holds
    no mesh point, its TOS is undefined; lma.json said NaN there (jq refused the file), now null with points 0.
    The `--device cuda` of a shape myocardium is said in one line."""
    from CardiacDiffusionLib.activation.phantom_case import PhantomCase
    from CardiacDiffusionLib.activation.sectors import lv_frame

    case = PhantomCase(0)
    labels, strain = tmp_path / "sax_labels.nii.gz", tmp_path / "strain.npy"
    sitk.WriteImage(case.stack.to_image(labels=True), str(labels))
    np.save(strain, case.strain)
    frame = lv_frame(case.stack)
    apex = frame.centres[-1] + 16.0 * frame.axis  # 16 mm beyond the last myocardium slice, 10 mm apart
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["lma", "--slices", str(labels), "--strain", str(strain), "--apex", ",".join(f"{v:.4f}" for v in apex),
                 "--device", "cuda", "--out", str(out)]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "note: --device cuda: --method shape runs on the CPU (only sadir uses the device)" in said
    lma = strict_file(out / "lma.json")
    apex_row = lma["segments"][16]
    assert apex_row["segment"] == 17 and apex_row["points"] == 0
    assert apex_row["tos_median_ms"] is None and apex_row["tos_mean_ms"] is None and apex_row["late_fraction"] is None
    filled = [r for r in lma["segments"] if r["points"]]
    assert len(filled) == 16 and all(isinstance(r["tos_median_ms"], float) for r in filled)
    assert lma["lead"]["segment"] in (5, 6, 11, 12) and lma["lead"]["tos_median_ms"] > 100
    assert "17,apex,nan,nan,0," in (out / "segments.csv").read_text()  # the CSV keeps its own NaN cells


# ---- training: log, progress lines, config, checkpoint ------------------------------------------------------------
def test_training_files_are_strict_with_an_undefined_validation_dice(tmp_path, capsys):
    """A validation Dice of a label in neither mask (the morphology net's RV on slices without RV) is NaN:
    train_log.jsonl and the `validate` progress line hold null, the MSE a number; config.json and the
    checkpoint's JSON header are strict."""
    from CardiacDiffusionLib.metrics import dice
    from CardiacDiffusionLib.training import train
    from CardiacDiffusionLib.training.checkpoint import latest_checkpoint
    from CardiacDiffusionLib.training.toy import ToyTask

    class ToyWithEmptyLabel(ToyTask):
        def validate(self, model, step):
            empty = np.zeros((4, 4), bool)
            return {**super().validate(model, step), "val_dice_RV": dice(empty, empty)}

    assert np.isnan(dice(np.zeros((4, 4), bool), np.zeros((4, 4), bool)))
    cfg = {"task": "toy", "model": {"features": 8, "hidden": 16, "dropout": 0.0}, "data": {"size": 20, "features": 8},
           "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 4, "validate_every": 2, "seed": 3},
           "device": "cpu"}  # fmt: skip
    capsys.readouterr()
    train(ToyWithEmptyLabel(), cfg, tmp_path, progress="json")
    events = [strict_json(line) for line in capsys.readouterr().out.splitlines()]
    validate = [e for e in events if e["event"] == "validate"]
    assert [e["step"] for e in validate] == [2, 4] and all(e["val_dice_RV"] is None for e in validate)
    assert all(e["val_mse"] > 0 for e in validate)
    records = [strict_json(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("stage") == "val"]
    assert len(val) == 2 and all(r["val_dice_RV"] is None and r["val_mse"] > 0 for r in val)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert strict_file(tmp_path / "config.json")["train"]["steps"] == 4
    with safe_open(str(latest_checkpoint(tmp_path / "checkpoints")), framework="pt") as f:
        assert strict_json(f.metadata()["state"])["step"] == 4
    # an infinite setting (torch takes grad_clip inf as no clipping) would make config.json and the checkpoints
    # non-JSON: refused by its key before the work (it wrote Infinity before)
    cfg["optim"] = {"grad_clip": float("inf")}
    with pytest.raises(InputError, match=r"config optim.grad_clip = inf: not a finite number"):
        train(ToyTask(), cfg, tmp_path / "inf", progress="none")
    assert not (tmp_path / "inf").exists()


def test_checkpoint_keeps_non_finite_floats_in_strict_json(tmp_path):
    """A plateau scheduler starts at best = inf; a float array may hold NaN: both round-trip exactly, tagged."""
    from CardiacDiffusionLib.training.checkpoint import load_checkpoint, save_checkpoint

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    assert plateau.state_dict()["best"] == float("inf")
    state = {"scheduler": plateau.state_dict(), "curve": np.array([0.5, np.nan, -np.inf]), "low": -float("inf")}
    path = save_checkpoint(tmp_path / "c.safetensors", state)
    with safe_open(str(path), framework="pt") as f:
        header = strict_json(f.metadata()["state"])
    assert header["scheduler"]["best"] == {"__float__": "inf"}
    back = load_checkpoint(path)
    assert back["scheduler"]["best"] == float("inf") and back["low"] == -float("inf")
    assert back["curve"].dtype == np.float64 and np.array_equal(back["curve"], state["curve"], equal_nan=True)
    again = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    again.load_state_dict(back["scheduler"])
    assert again.best == float("inf")


# ---- sample: the files it wrote, labels.json ------------------------------------------------------------------------
def test_sample_names_the_files_it_wrote(tmp_path, capsys):
    from CardiacDiffusionLib.cli.sample import written_names
    from CardiacDiffusionLib.ldm.diffusion import LatentDiffusion
    from CardiacDiffusionLib.models.store import save_model

    torch.manual_seed(0)
    vae = {"channels": [8, 16], "norm_num_groups": 4}
    unet = {"channels": [16, 16], "attention_levels": [False, True], "num_head_channels": [0, 16], "norm_num_groups": 8}
    model = LatentDiffusion({"vae": vae, "unet": unet, "image_size": 16, "spacing_mm": 10.0})
    path = tmp_path / "ldm.safetensors"
    save_model(model, path, model.config, architecture="ldm")
    out = tmp_path / "pairs"
    capsys.readouterr()
    assert main(["sample", "--model", str(path), "--steps", "2", "--n", "2", "--device", "cpu", "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    names = "sample_000_image.nii.gz, sample_000_labels.nii.gz, sample_001_image.nii.gz, sample_001_labels.nii.gz"
    assert err[-1] == f"sample: wrote {names}, labels.json to {out}"
    assert all((out / n).is_file() for n in names.split(", "))
    info = strict_file(out / "labels.json")
    assert [s["index"] for s in info["samples"]] == [0, 1] and info["steps"] == 2
    many = [Path(f"sample_{i:03d}_{k}.nii.gz") for i in range(100) for k in ("image", "labels")] + [Path("labels.json")]
    assert written_names(many) == ("sample_000_image.nii.gz, sample_000_labels.nii.gz, ..., sample_099_image.nii.gz, "
                                   "sample_099_labels.nii.gz (100 pairs), labels.json")  # fmt: skip


# ---- models add: a card the JSON registry cannot hold -------------------------------------------------------------
def test_model_card_with_infinity_or_a_date_is_refused(tmp_path, monkeypatch):
    from CardiacDiffusionLib.models import store
    from CardiacDiffusionLib.models.store import add_model, save_model
    from CardiacDiffusionLib.training.toy import ToyMLP

    monkeypatch.setenv("CARDIAC_DIFFUSION_HOME", str(tmp_path / "home"))
    shipped = tmp_path / "shipped.json"
    shipped.write_text('{"models": []}')
    monkeypatch.setattr(store, "shipped_registry_path", lambda: shipped)
    config = {"features": 4, "hidden": 8, "dropout": 0.0}
    save_model(ToyMLP(**config), tmp_path / "toy.safetensors", config, architecture="toy_mlp")
    card = tmp_path / "card.yaml"
    card.write_text("metrics: {psnr_db: .inf, dice: 0.9}\n")
    with pytest.raises(InputError, match=r"--card .*card.yaml: metrics.psnr_db = inf: JSON has no NaN or infinity"):
        add_model("mine", "dmcvr", tmp_path / "toy.safetensors", card=card)
    card.write_text("version: '1'\ntraining: {date: 2024-05-01}\n")
    with pytest.raises(InputError, match="date is not JSON; write it as text"):
        add_model("mine", "dmcvr", tmp_path / "toy.safetensors", card=card)
    assert not (tmp_path / "home" / "models.json").exists()  # nothing registered
    card.write_text("metrics: {psnr_db: null, dice: 0.9}\n")
    add_model("mine", "dmcvr", tmp_path / "toy.safetensors", card=card)
    entry = strict_file(tmp_path / "home" / "models.json")["models"][0]
    assert entry["metrics"] == {"psnr_db": None, "dice": 0.9}


# ---- OMP_NUM_THREADS ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "0", "-2"])
def test_bad_omp_num_threads_is_said_in_one_line(value, monkeypatch, capsys):
    """OpenMP (libgomp) ignores such a value with a bare 'Invalid value' line and uses every core; the package
    says it once, naming the variable, uses the physical cores and drops the variable (children inherit that)."""
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    try:
        assert D.configure_cpu_threads() == D.physical_cores() == torch.get_num_threads()
        err = capsys.readouterr().err.splitlines()
        assert err == [f"warning: OMP_NUM_THREADS={value!r} is not a whole number of threads above 0; ignored "
                       f"(torch's OpenMP ignores it too): {D.physical_cores()} CPU threads, this machine's physical "
                       "cores, are used; set e.g. OMP_NUM_THREADS=1, or unset it"]  # fmt: skip
        assert "OMP_NUM_THREADS" not in os.environ
        D.configure_cpu_threads()
        assert capsys.readouterr().err == ""  # said once
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert D.configure_cpu_threads() == 1 and torch.get_num_threads() == 1 and capsys.readouterr().err == ""
    finally:
        torch.set_num_threads(before)


def test_bad_omp_num_threads_on_the_command_line_is_one_line_before_torch_loads(tmp_path):
    """The CLI checks the variable before torch (and its OpenMP) loads: OpenMP's own line does not appear."""
    env = {**os.environ, "OMP_NUM_THREADS": "abc"}
    command = [sys.executable, "-m", "CardiacDiffusionLib.cli.main", "sample", "--n", "0", "--out", str(tmp_path / "s")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    err = done.stderr.splitlines()
    assert len(err) == 2 and "libgomp" not in done.stderr, err
    assert err[0].startswith("warning: OMP_NUM_THREADS='abc' is not a whole number of threads above 0; ignored")
    assert err[1] == "error: --n 0: give at least 1 pair"
    torch_loaded = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert "libgomp: Invalid value for environment variable OMP_NUM_THREADS" in torch_loaded.stderr  # what it was
