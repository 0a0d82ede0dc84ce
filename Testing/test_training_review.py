"""The training runner as an ML engineer meets it (toy task, CPU, seconds): typos named with the nearest key, a run
folder holding something else left untouched, a full disk, a diverging loss, validation that draws random numbers,
checkpoints that are not this run's."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.training import load_config, train
from CardiacDiffusionLib.training.checkpoint import latest_checkpoint, load_checkpoint
from CardiacDiffusionLib.training.toy import ToyTask
from CardiacDiffusionLib.utils.jsonfile import loads_strict

REPO = Path(__file__).resolve().parents[1]
# 20 items / batch 4: 5 steps an epoch; checkpoints at 4, 8, 12
BASE = {"task": "toy", "model": {"features": 8, "hidden": 16, "dropout": 0.2}, "data": {"size": 20, "features": 8},
        "optim": {"lr": 0.01, "grad_clip": 1.0}, "schedule": {"name": "cosine", "warmup_steps": 2},
        "train": {"steps": 12, "batch_size": 4, "checkpoint_every": 4, "ema_decay": 0.9, "seed": 3}, "device": "cpu"}  # fmt: skip


def config(**train) -> dict:
    cfg = json.loads(json.dumps(BASE))
    cfg["train"].update(train)
    return cfg


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train(ToyTask(), config(), out, progress="none")
    return out


def test_typos_are_named_with_the_nearest_valid_key(tmp_path, capsys):
    from CardiacDiffusionLib.cli.main import main

    for bad, said in (("train.stepz=5", r"config train.stepz: unknown key \(did you mean train.steps\?\)"),
                      ("trian.steps=5", r"config trian: unknown key \(did you mean train\?\)"),
                      ("optim.lrr=1e-3", r"config optim.lrr: unknown key \(did you mean optim.lr\?\)"),
                      ("train.steps=abc", r"config train.steps: 'abc' is not a number; expected e.g. train.steps=12"),
                      ("task=toyy", r"unknown task 'toyy' \(did you mean toy\?\)")):  # fmt: skip
        with pytest.raises(InputError, match=said):
            train(None, load_config(config(), [bad]), tmp_path / "x", progress="none")
    assert not (tmp_path / "x").exists()
    for argv, said in ((["toy", "--stage", "secnd"], "no stage 'secnd' (did you mean second?)"),
                       (["toy", "secnd:train.steps=3"], "no stage 'secnd' (did you mean second?)"),
                       (["tyo"], "no such workflow (did you mean toy?)")):  # fmt: skip
        assert main(["train", *argv, "--out", str(tmp_path / "w"), "device=cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and err.count("\n") == 1
    assert not (tmp_path / "w").exists()


def test_an_out_folder_holding_something_else_is_left_untouched(straight, tmp_path):
    """Before: another config.json was overwritten, a foreign train_log.jsonl ended in a JSONDecodeError traceback,
    a model.safetensors without checkpoints was silently replaced by a new run's."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": 1}\n')
    (mine / "train_log.jsonl").write_text("not json\n")
    other = tmp_path / "other"  # another run stopped before its first checkpoint
    other.mkdir()
    (other / "config.json").write_text(json.dumps(load_config(config(), ["optim.lr=0.5"])))
    pruned = tmp_path / "pruned"  # a finished run whose checkpoints were deleted
    shutil.copytree(straight, pruned)
    shutil.rmtree(pruned / "checkpoints")
    plain = tmp_path / "plain"
    plain.write_text("a file")
    for out, said in ((mine, "its config.json is not a training run's config"),
                      (other, r"holds another run \(config.json, no checkpoint yet\) with other settings: optim.lr 0.5 -> 0.01"),
                      (pruned, "holds model.safetensors but no checkpoint to resume from"),
                      (plain, "is a file, not a folder")):  # fmt: skip
        before = files(out) if out.is_dir() else out.read_bytes()
        with pytest.raises(InputError, match=said):
            train(ToyTask(), config(), out, progress="none")
        assert (files(out) if out.is_dir() else out.read_bytes()) == before, out
    # the same run stopped before its first checkpoint starts again there
    (other / "config.json").write_text(json.dumps(load_config(config())))
    assert train(ToyTask(), config(), other, progress="none").step == 12
    assert losses(other) == losses(straight)


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


class CancelledToy(ToyTask):
    """Ctrl-C during its ``at``-th loss."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().loss(model, batch)


def test_a_full_disk_is_said_and_the_last_checkpoint_kept(straight, tmp_path):
    """A real write failure (the process may not write files over 8 kB; a checkpoint is ~30 kB): one line
    naming the file and the checkpoint kept, no partial file; resumed with room it ends as an uninterrupted run.
    Before: a SafetensorError traceback."""
    out = tmp_path / "run"
    assert train(CancelledToy(at=4), config(), out, progress="none").step == 4  # a checkpoint at step 4
    cmd = [sys.executable, "-m", "CardiacDiffusionLib.training", "--config", str(out / "config.json"), "--out", str(out),
           "--progress", "none"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    full = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, preexec_fn=_limit_file_size(8000))
    assert full.returncode == 2, full.stderr[-2000:]
    line = full.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: --out {out}: cannot write the checkpoint of step 8 (File too large); free disk "
                           f"space or choose another --out; the newest checkpoint, {out}/checkpoints/step_00000004"), line
    assert "Traceback" not in full.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004.safetensors"]  # no .tmp
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert losses(out) == losses(straight)
    final, reference = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)


class DivergingToy(ToyTask):
    """The loss of its ``at``-th step is NaN (as an exploding run's would be)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def loss(self, model, batch):
        self.calls += 1
        out = super().loss(model, batch)
        return {**out, "loss": out["loss"] * float("nan")} if self.calls == self.at else out


def test_a_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(straight, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InputError) as error:
        train(DivergingToy(at=7), config(), out, progress="none")
    last = out / "checkpoints" / "step_00000004.safetensors"
    message = str(error.value)
    assert message.startswith("training: loss is nan at step 7; stopped before the update. The same settings diverge "
                              "again: try a lower optim.lr") and message.endswith(f"train.init_from={last}")  # fmt: skip
    assert latest_checkpoint(out / "checkpoints") == last and [s for s, _ in losses(out)] == [1, 2, 3, 4, 5, 6]
    # the named checkpoint is a valid start: its model weights, as they were at step 4 (lr 0: unchanged by the step)
    again = config(steps=1, ema_decay=0.0, init_from=str(last))
    again["optim"]["lr"] = 0.0
    train(ToyTask(), again, tmp_path / "again", progress="none")
    weights, saved = load_file(tmp_path / "again" / "model.safetensors"), load_checkpoint(last)["model"]
    assert weights.keys() == saved.keys() and all(torch.equal(weights[k], saved[k]) for k in saved)
    # a fresh run diverging at its first step has no checkpoint to name
    with pytest.raises(InputError, match=r"at step 1; .* in a new --out \(no checkpoint was saved before it\)"):
        train(DivergingToy(at=1), config(), tmp_path / "first", progress="none")


class RandomValidationToy(ToyTask):
    """Validation that draws from every global generator (a diffusion model sampling noise would)."""

    def validate(self, model, step):
        noise = float(torch.randn(1)) + np.random.rand() + random.random()
        return {**super().validate(model, step), "noise": noise}


def test_validation_randomness_does_not_change_the_training(straight, tmp_path):
    """train.validate_every may change on resume: validating must not move the training's random streams.
    Before: validating every 3 steps changed the losses from step 4 on."""
    train(RandomValidationToy(), config(validate_every=3), tmp_path / "v", progress="none")
    assert losses(tmp_path / "v") == losses(straight)
    assert load_file(tmp_path / "v" / "model.safetensors").keys() == load_file(straight / "model.safetensors").keys()
    assert all(torch.equal(a, b) for a, b in zip(load_file(tmp_path / "v" / "model.safetensors").values(),
                                                 load_file(straight / "model.safetensors").values()))  # fmt: skip


class TensorAfterStepToy(ToyTask):
    """An ``after_step`` returning tensors and numpy numbers (as SADIR's atlas step might)."""

    def after_step(self, model, step, averaged):
        return {"atlas_change": torch.tensor(0.5 / step), "count": np.int64(step)}


def test_json_lines_and_log_parse_strictly_with_tensor_metrics(tmp_path, capsys):
    """Before: a tensor metric from after_step ended the run with 'Tensor is not JSON'."""
    result = train(TensorAfterStepToy(), config(steps=5), tmp_path, progress="json")
    assert result.status == "done"
    events = [loads_strict(line) for line in capsys.readouterr().out.splitlines()]
    after = [e for e in events if e["event"] == "after_step"]
    assert [e["step"] for e in after] == [1, 2, 3, 4, 5] and after[1]["atlas_change"] == 0.25 and after[1]["count"] == 2
    records = [loads_strict(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["atlas_change"] for r in records if r.get("stage") == "after_step"] == pytest.approx([0.5, 0.25, 0.5 / 3, 0.125, 0.1], rel=1e-6)


def test_a_model_file_among_the_checkpoints_is_named_with_what_to_do(straight, tmp_path):
    shutil.copytree(straight, tmp_path, dirs_exist_ok=True)
    shutil.copy(tmp_path / "model.safetensors", tmp_path / "checkpoints" / "step_00000016.safetensors")
    with pytest.raises(InputError, match=r"step_00000016.safetensors: not a training checkpoint of this project \(format "
                       r"cardiac-diffusion-model/1\); move it out of .*checkpoints \(or delete it\)"):  # fmt: skip
        train(ToyTask(), config(steps=20), tmp_path, progress="none")


def test_only_rank_zero_says_done(tmp_path, capsys, monkeypatch):
    """Under torchrun every rank runs the CLI: a rank > 0 (RANK set by torchrun) prints nothing; rank 0 says done.
    Before: each rank printed its own 'done: ... model None' line."""
    from CardiacDiffusionLib.training.cli import main

    argv = ["--out", str(tmp_path / "r"), "task=toy", "device=cpu", "train.steps=2", "data.size=8", "--progress", "bar"]
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main([*argv, "train.steps=3"]) == 0
    assert "done: 3 steps, final loss" in capsys.readouterr().err


def test_a_log_line_cut_by_a_hard_kill_is_dropped_on_resume(straight, tmp_path):
    """kill -9 (or a power cut) while a log line is written: the half line is dropped and the run resumes as the
    uninterrupted one. Before: a JSONDecodeError traceback on every resume."""
    assert train(CancelledToy(at=6), config(), tmp_path, progress="none").step == 6
    with (tmp_path / "train_log.jsonl").open("a") as log:
        log.write('{"step": 7, "epoch": 1, "lo')
    assert train(ToyTask(), config(), tmp_path, progress="none").step == 12
    assert losses(tmp_path) == losses(straight)
