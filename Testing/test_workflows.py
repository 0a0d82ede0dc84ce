"""`cardiac-diffusion train <workflow>`: staged recipes on the shared runner."""

import json

import pytest

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.training.workflows import available, stage_configs


def test_recipe_overrides_and_stage_references(tmp_path):
    stages = stage_configs("toy", tmp_path, ["train.seed=3", "second:optim.lr=0.5"], data="/data/x")
    assert [s.name for s in stages] == ["first", "second"]
    first, second = (s.config for s in stages)
    assert first["train"]["seed"] == second["train"]["seed"] == 3
    assert first["optim"]["lr"] == 0.01 and second["optim"]["lr"] == 0.5
    assert second["train"]["init_from"] == str(tmp_path / "first" / "model.safetensors")
    assert first["data"]["root"] == "/data/x"
    with pytest.raises(InputError, match="no stage 'third'"):
        stage_configs("toy", tmp_path, ["third:train.steps=1"])
    with pytest.raises(InputError, match="no such workflow"):
        stage_configs("nonsense", tmp_path)
    assert "toy" in available()


def test_train_workflow_runs_stages_in_order(tmp_path, capsys):
    assert main(["train", "toy", "--out", str(tmp_path), "--progress", "none"]) == 0
    for stage, steps in (("first", 20), ("second", 10)):
        log = [json.loads(line) for line in (tmp_path / stage / "train_log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == steps
        assert (tmp_path / stage / "model.safetensors").is_file()
    first = [json.loads(l) for l in (tmp_path / "first" / "train_log.jsonl").read_text().splitlines()]
    second = [json.loads(l) for l in (tmp_path / "second" / "train_log.jsonl").read_text().splitlines()]
    # the second stage starts from the first stage's weights: its first loss is near the first's last
    assert second[0]["loss"] < 0.5 * first[0]["loss"]


def test_overrides_after_options(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "toy", "--out", str(out), "--progress", "none", "first:train.steps=4", "second:train.steps=2"]) == 0
    assert json.loads((out / "second" / "train_log.jsonl").read_text().splitlines()[-1])["step"] == 2
    with pytest.raises(SystemExit):
        main(["train", "toy", "--out", str(out), "--bogus"])
