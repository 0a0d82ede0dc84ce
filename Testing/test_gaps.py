"""Gaps reviewers found: the shipped tasks' model/data settings typed by their signatures (every preset and
documented command still loads, a wrong type is refused by key), and the LDM evaluation's undefined Dice and
infinite PSNR under the strict JSON writer."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.training import load_config
from CardiacDiffusionLib.training.workflows import stage_configs
from CardiacDiffusionLib.utils.jsonfile import dumps, loads_strict


# ---- (1) the shipped tasks declare their model/data signatures ----------------------------------------------------
# (every preset and documented command loads with them: test_config_nested.py, which reads the commands from the docs)
@pytest.mark.parametrize("workflow, override, said", [
    ("dmcvr", "data.size=abc", "config data.size: 'abc'; expected a whole number, e.g. data.size=64"),
    ("dmcvr", "model.z_dim=1.5", "config model.z_dim: 1.5; expected a whole number, e.g. model.z_dim=128"),
    ("dmcvr", "data.augment=3", "config data.augment: 3; expected true or false, e.g. data.augment=true"),
    ("ldm", "vae:model.kl_weight=abc", "config model.kl_weight: 'abc'; expected a number, e.g. model.kl_weight=1e-06"),
    ("ldm", "vae:data.noise_hu=[15]", "config data.noise_hu: [15]; expected a number, e.g. data.noise_hu=15.0"),
    ("ldm", "diffusion:model.vae=3", 'config model.vae: 3; expected text, e.g. model.vae="{stage:vae}"'),
    ("ldm64", "diffusion:data.encoded_draws=abc", "config data.encoded_draws: 'abc'; expected a whole number"),
    ("ldm64", "diffusion:model.unet=3", "config model.unet: 3; expected a mapping of keys"),
    ("tos", "model.channels=abc", "config model.channels: 'abc'; expected a whole number, e.g. model.channels=32"),
    ("tos", "data.frame_ms=abc", "config data.frame_ms: 'abc'; expected a number, e.g. data.frame_ms=17.0"),
    ("sadir", "atlas:model.reg=abc", "config model.reg: 'abc'; expected a number, e.g. model.reg=1e-06"),
    ("sadir", "main:data.full_fraction=abc", "config data.full_fraction: 'abc'; expected a number"),
    ("sadir_unet", "model.num_res_units=abc", "config model.num_res_units: 'abc'; expected a whole number"),
])  # fmt: skip
def test_a_wrong_type_in_a_shipped_task_setting_is_refused_by_key(workflow, override, said, tmp_path):
    """Each stage the override reaches refuses it when its config is loaded (before any stage trains)."""
    stages = stage_configs(workflow, tmp_path, [override])
    target = override.partition(":")[0] if ":" in override.split("=")[0] else None
    for stage in stages:
        if target in (None, stage.name):
            with pytest.raises(InputError, match=re.escape(said)):
                load_config(stage.config)
        else:
            load_config(stage.config)


def test_the_train_command_says_a_wrong_type_in_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"  # data.phantoms=2 train.steps=1: were it not refused, the work would stay small
    assert main(["train", "tos", "--out", str(out), "device=cpu", "data.phantoms=2", "train.steps=1",
                 "model.kernel=five"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err == "error: train tos stage main: config model.kernel: 'five'; expected a whole number, e.g. model.kernel=5\n", err
    assert not out.exists()


def test_numbers_written_as_text_are_read_by_the_shipped_signatures():
    """YAML 1.1 reads ``1e-3`` as text: typed to the number the task's signature wants, whole floats as ints."""
    cfg = load_config({"task": "CardiacDiffusionLib.sadir.train:SadirTask", "model": {"reg": "1e-3", "size": 32.0},
                       "data": {"full_fraction": "0.25", "phantoms": "8"}})  # fmt: skip
    assert cfg["model"] == {"reg": 1e-3, "size": 32} and cfg["data"] == {"full_fraction": 0.25, "phantoms": 8}
    assert isinstance(cfg["model"]["size"], int) and isinstance(cfg["data"]["phantoms"], int)
    cfg = load_config({"task": "dmcvr_seg", "data": {"spacing_mm": 2, "val_patients": [61, 62]}})
    assert cfg["data"] == {"spacing_mm": 2.0, "val_patients": [61, 62]} and isinstance(cfg["data"]["spacing_mm"], float)


# ---- (2) LDM evaluation: undefined Dice and infinite PSNR ----------------------------------------------------------
def _run(seed: int, arms: dict[str, float | None], agreement: float | None) -> dict:
    return {"setup": {"seed": seed}, "downstream": {a: {"dice": {"mean": {"mean": m, "sd": None}}} for a, m in arms.items()},
            "label_image_agreement": {"generated": {"mean": {"mean": agreement, "sd": None}}}}  # fmt: skip


def test_summarise_repeats_leaves_an_undefined_arm_dice_out_and_says_so():
    from CardiacDiffusionLib.ldm.evaluate import format_repeats, summarise_repeats

    runs = [_run(0, {"a": 0.8, "b": 0.7}, 0.5), _run(1, {"a": None, "b": 0.6}, None), _run(2, {"a": 0.6, "b": 0.9}, 0.7)]
    summary = summarise_repeats(runs)  # was a TypeError (np.mean of None, None > 0.6)
    assert summary["arms"]["a"] == {"mean": pytest.approx(0.7), "sd": pytest.approx(0.1), "n": 2, "runs": [0.8, None, 0.6]}
    assert summary["arms"]["b"] == {"mean": pytest.approx(0.7333333), "sd": pytest.approx(np.std([0.7, 0.6, 0.9])),
                                    "n": 3, "runs": [0.7, 0.6, 0.9]}  # fmt: skip
    assert summary["label_image_agreement"]["mean"] == pytest.approx(0.6) and summary["label_image_agreement"]["n"] == 2
    assert summary["wins"] == {"a > b": 1} and summary["compared"] == {"a > b": 2}
    assert summary["notes"] == ["a: mean Dice undefined in 1 of 3 runs (seeds 1): left out",
                                "label-image agreement: mean Dice undefined in 1 of 3 runs (seeds 1): left out"]  # fmt: skip
    assert loads_strict(dumps(summary))["arms"]["a"]["runs"] == [0.8, None, 0.6]
    table = format_repeats(summary)
    assert "| a | 0.700 | 0.100 |" in table and "a > b: 1 of 2 seeds" in table and "seeds 1): left out" in table
    nothing = summarise_repeats([_run(0, {"a": None}, None)])
    assert nothing["arms"]["a"] == {"mean": None, "sd": None, "n": 0, "runs": [None]}
    assert "| a | - | - |" in format_repeats(nothing)


class _ExactVAE:
    """A VAE whose round trip returns volume 0 exactly (infinite PSNR) and the others off by 0.02 everywhere."""

    def round_trip(self, images, labels):
        recon = images.clone()
        recon[1:] += 0.02
        return recon, labels


def test_vae_round_trip_psnr_leaves_exact_volumes_out_of_the_mean_and_counts_them():
    from types import SimpleNamespace

    from CardiacDiffusionLib.ldm.evaluate import format_table, vae_fidelity

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 16, 16, 16, generator=gen) * 1.6 - 0.8  # inside [-1, 1]: the clamp changes nothing
    labels = torch.randint(0, 9, (2, 16, 16, 16), generator=gen)
    result = vae_fidelity(SimpleNamespace(vae=_ExactVAE()), images, labels)
    want = 10 * np.log10(2.0**2 / 0.02**2)  # data range 2 (unit-range image), MSE 0.02^2: 40 dB
    assert result["psnr_db"] == pytest.approx(want, abs=1e-3) and result["psnr_infinite"] == 1
    assert result["notes"] == ["PSNR: 1 of 2 volumes reproduced exactly (infinite PSNR), left out of the mean"]
    assert result["label_dice"]["LA"] == {"mean": 1.0, "sd": 0.0}
    assert loads_strict(dumps(result))["psnr_db"] == pytest.approx(want, abs=1e-3)  # was inf: refused by the writer
    one = vae_fidelity(SimpleNamespace(vae=_ExactVAE()), images[:1], labels[:1])  # every volume exact
    assert one["psnr_db"] is None and one["psnr_infinite"] == 1 and "null" in dumps(one)
    dices = result["label_dice"]
    table = format_table({"downstream": {}, "vae_round_trip_test": one | {"label_dice": dices},
                          "label_image_agreement": {"generated": dices}, "diversity_ms_ssim": {"generated": 0.1, "real_role": 0.2},
                          "label_noise": {k: {"noisy_fraction": 0.0} for k in ("before_cleanup", "after_cleanup",
                                                                              "real_role_labels")}})  # fmt: skip
    assert "VAE round trip: PSNR inf dB (1 volumes exact, infinite PSNR, left out), SSIM 1.000" in table

