"""Leftovers reviewers found: wrong-type model/data settings, keep_checkpoints=0, checkpoint file modes, the
wording of a base/apex point outside the SAX image."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.training import load_config, train
from CardiacDiffusionLib.training.checkpoint import list_checkpoints, save_checkpoint
from helpers import lma_phantom_files

TOY = {"task": "toy", "device": "cpu", "data": {"size": 32},
       "train": {"steps": 4, "batch_size": 8, "ema_decay": 0, "checkpoint_every": 1}}  # fmt: skip


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---- (1) model/data values typed by the task's signature, non-finite numbers refused by key ----------------------
@pytest.mark.parametrize("override, said", [
    ("model.dropout=-inf", "config model.dropout: -inf is not a finite number"),  # was a TypeError from nn.Dropout
    ("model.hidden=abc", "config model.hidden: 'abc'; expected a whole number, e.g. model.hidden=32"),
    ("model.dropout=[0.1]", "config model.dropout: [0.1]; expected a number, e.g. model.dropout=0.1"),
    ("data.size=1.5", "config data.size: 1.5; expected a whole number, e.g. data.size=64"),
    ("data.jitter=NaN", "config data.jitter: nan is not a finite number"),
    ("data.split=3", "config data.split: 3; expected text, e.g. data.split=\"train\""),
    ("model.features=true", "config model.features: True; expected a whole number"),
])  # fmt: skip
def test_wrong_model_or_data_values_are_refused_by_key_before_the_work(override, said, tmp_path, capsys):
    err = _refused(["train", "toy", "--out", str(tmp_path / "run"), "device=cpu", override], capsys)
    assert said in err and "stage first" in err, err
    assert not (tmp_path / "run").exists()


def test_a_value_out_of_its_range_is_said_as_a_config_error_before_anything_is_written(tmp_path, capsys):
    """The right type but out of range (torch's Dropout refuses p=2 with a ValueError when the model is built):
    one error line naming the section, no traceback, no run folder."""
    assert main(["train", "toy", "--out", str(tmp_path / "run"), "device=cpu", "model.dropout=2"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("error: config model: task toy cannot build its model from these settings (dropout "
                                    "probability has to be between 0 and 1, but got 2.0); check the model.* values"), err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_numbers_written_as_text_are_typed_and_untyped_sections_still_refuse_non_finite(tmp_path):
    cfg = load_config({**TOY, "model": {"dropout": "1e-1", "hidden": 16.0}})  # YAML 1.1 reads 1e-1 as text
    assert cfg["model"] == {"dropout": 0.1, "hidden": 16} and isinstance(cfg["model"]["hidden"], int)
    result = train(None, cfg, tmp_path / "run", progress="none")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert saved == {"dropout": 0.1, "hidden": 16} and result.step == 4 and np.isfinite(result.loss)
    # keys a task's signature does not name (its own code reads them): non-finite values still refused, by key, nested too
    vae = "CardiacDiffusionLib.ldm.tasks:VAETask"
    for model, key in (({"kl_weight": "-inf"}, "model.kl_weight"), ({"unet": {"channels": [8, float("nan")]}},
                                                                    r"model.unet.channels\[1\]")):  # fmt: skip
        with pytest.raises(InputError, match=rf"config {key}: .* is not a finite number"):
            load_config({"task": vae, "model": model})
    typed = load_config({"task": vae, "model": {"kl_weight": "1e-6", "other": "1e-6"}})["model"]
    assert typed == {"kl_weight": 1e-6, "other": "1e-6"}  # VAETask's signature names kl_weight; the other is left as given


# ---- (2) keep_checkpoints ------------------------------------------------------------------------------------
def test_keep_checkpoints_below_one_is_refused_and_n_keeps_n(tmp_path):
    for bad in ("0", "-1"):
        with pytest.raises(InputError, match=rf"config train.keep_checkpoints: {bad}; expected a whole number >= 1"):
            load_config(TOY, [f"train.keep_checkpoints={bad}"])
    for keep in (1, 3):
        out = tmp_path / f"keep{keep}"
        train(None, load_config(TOY, [f"train.keep_checkpoints={keep}"]), out, progress="none")
        assert [step for step, _ in list_checkpoints(out / "checkpoints")] == list(range(5 - keep, 5))


# ---- (3) file modes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoints_and_models_follow_the_umask_like_the_other_outputs(umask, tmp_path):
    """safetensors wrote checkpoints 0600 whatever the umask: a group could not read a shared run's checkpoints."""
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        train(None, load_config(TOY, ["train.steps=2"]), out, progress="none")
        direct = save_checkpoint(tmp_path / "direct.safetensors", {"step": 1})
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    files = [out / "config.json", out / "model.safetensors", direct, *(p for _, p in list_checkpoints(out / "checkpoints"))]
    assert len(files) == 5
    assert {str(f.relative_to(tmp_path)): oct(f.stat().st_mode & 0o777) for f in files} == \
        {str(f.relative_to(tmp_path)): oct(want) for f in files}  # fmt: skip
    assert not list(tmp_path.rglob("*.tmp"))


# ---- (4) a base/apex point outside the SAX image -----------------------------------------------------------------
@pytest.fixture(scope="module")
def lma_case(tmp_path_factory):
    return lma_phantom_files(tmp_path_factory.mktemp("lma"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("option, what", [("--apex", "the LV apex"), ("--base", "the LV base")])
def test_a_base_or_apex_outside_the_image_is_refused_in_its_own_words(lma_case, option, what, tmp_path, capsys):
    """An apex 1 m along the long axis was taken without a word (slices at heights 0.00-0.08, every segment basal);
    the refusal named the RV insertion. The true points are taken; far ones are refused naming the option."""
    from CardiacDiffusionLib.activation.pipeline import check_in_view

    folder, case = lma_case
    truth = case.phantom.apex if option == "--apex" else case.phantom.base_center
    check_in_view(case.stack, truth, option)  # the phantom's own apex / base centre
    far = case.stack.origins[-1] + 1000 * case.stack.normal
    beside = truth + 200 * case.stack.row_dir
    labels, strain = folder / "labels.nii.gz", folder / "strain.npy"
    before = _digest(labels), _digest(strain)
    for point, where in ((far, "mm beyond the last slice; the stack is 100 mm long"), (beside, "at column")):
        text = ",".join(f"{v:g}" for v in point)
        err = _refused(["lma", "--slices", str(labels), "--strain", str(strain), option, text,
                        "--out", str(tmp_path / "out")], capsys)  # fmt: skip
        assert err.startswith(f"error: {option} {text}: lies outside the SAX image (") and where in err, err
        assert f"give {what}" in err and f"or leave {option} out to estimate it from the slices" in err, err
        assert "RV insertion" not in err and "Slicer shows RAS: negate x and y" in err, err
    assert (_digest(labels), _digest(strain)) == before and not (tmp_path / "out").exists()
    with pytest.raises(InputError, match=rf"^{option} .*: lies outside the SAX image .*give {what}"):
        from CardiacDiffusionLib.activation.pipeline import run_lma

        run_lma(case.stack, strain=case.strain, **{option[2:]: far})
