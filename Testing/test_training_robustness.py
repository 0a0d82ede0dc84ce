"""The training runner under a hard kill, a full disk on resume, a NaN gradient behind a finite loss, a changed
setting, and the command it records (toy task, CPU, seconds)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.models.store import load_model, read_model_header
from CardiacDiffusionLib.training import train
from CardiacDiffusionLib.training.checkpoint import latest_checkpoint, load_checkpoint
from CardiacDiffusionLib.training.toy import ToyTask

REPO = Path(__file__).resolve().parents[1]
# 20 items / batch 4: 5 steps an epoch; checkpoints at 4, 8, 12
BASE = {"task": "toy", "model": {"features": 8, "hidden": 16, "dropout": 0.2}, "data": {"size": 20, "features": 8},
        "optim": {"lr": 0.01}, "train": {"steps": 12, "batch_size": 4, "checkpoint_every": 4, "ema_decay": 0.9,
                                         "seed": 5}, "device": "cpu"}  # fmt: skip
TOS = "CardiacDiffusionLib.activation.train_tos:TOSTask"  # the task of `train tos`
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def config(**train) -> dict:
    cfg = json.loads(json.dumps(BASE))
    cfg["train"].update(train)
    return cfg


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train(ToyTask(), config(), out, progress="none")
    return out


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_while_resuming_keeps_the_log_of_the_steps_before_the_checkpoint(straight, tmp_path):
    """A run killed while logging step 12 (checkpoint 8, log lines 1-11) resumed on a full disk: the lines of steps 9-11
    go, those of steps 1-8 stay. Before: the log was rewritten whole, and the write cut short by the disk left only
    its first bytes, lost for good: the finished run's log missed step 8."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    (out / "checkpoints" / "step_00000012.safetensors").unlink()
    (out / "model.safetensors").unlink()
    lines = (out / "train_log.jsonl").read_text().splitlines(keepends=True)
    (out / "train_log.jsonl").write_text("".join(lines[:11]) + lines[11][:30])  # killed while writing step 12
    assert latest_checkpoint(out / "checkpoints").name == "step_00000008.safetensors"
    kept = "".join(lines[:8]).encode()
    limit = len(kept) - 100  # the disk holds less than the log of steps 1-8 (config.json, ~680 bytes, fits)
    assert (out / "config.json").stat().st_size < limit
    cmd = [sys.executable, "-m", "CardiacDiffusionLib.training", "--config", str(out / "config.json"), "--out",
           str(out), "--progress", "none"]  # fmt: skip
    full = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120, preexec_fn=_limit_file_size(limit))
    assert full.returncode == 2, full.stderr[-2000:]
    assert full.stderr.strip().splitlines()[-1].startswith(f"error: --out {out}: cannot write train_log.jsonl (File "
                                                           "too large); free disk space"), full.stderr[-2000:]  # fmt: skip
    assert (out / "train_log.jsonl").read_bytes() == kept
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert without_time(log_lines(out)) == without_time(log_lines(straight))
    final, reference = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert all(torch.equal(final[k], reference[k]) for k in reference)


class NanGradientToy(ToyTask):
    """At its ``at``-th step the loss stays finite but its gradient is infinite (sqrt at 0), as a norm of a zero
    vector gives."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def loss(self, model, batch):
        self.calls += 1
        out = super().loss(model, batch)
        if self.calls == self.at:
            w = model.net[0].weight.sum()
            out["loss"] = out["loss"] + torch.sqrt(w - w.detach())  # + 0, with an infinite gradient
        return out


def test_weights_poisoned_by_a_nan_gradient_are_not_saved_as_the_last_good_checkpoint(tmp_path):
    """Before: the NaN weights of step 8 were written as checkpoint 8, and the NaN loss of step 9 named it 'the last
    good checkpoint'; at the last step the NaN model was exported as done."""
    out = tmp_path / "mid"
    with pytest.raises(InputError) as error:
        train(NanGradientToy(at=8), config(), out, progress="none")
    said = str(error.value)
    assert said.startswith("training: weight net.0.weight is not finite after the update of step 8 (its loss, "), said
    assert f"train.init_from={out}/checkpoints/step_00000004.safetensors" in said
    assert latest_checkpoint(out / "checkpoints").name == "step_00000004.safetensors"
    assert all(bool(torch.isfinite(v).all()) for v in load_checkpoint(latest_checkpoint(out / "checkpoints"))["model"].values())

    last = tmp_path / "last"
    with pytest.raises(InputError, match="not finite after the update of step 12 "):
        train(NanGradientToy(at=12), config(), last, progress="none")
    assert not (last / "model.safetensors").exists()
    assert latest_checkpoint(last / "checkpoints").name == "step_00000008.safetensors"


def test_a_changed_model_size_is_named_by_its_key_alone(straight, tmp_path):
    """Before: `model {} -> None; model.hidden None -> 64`, an empty section named as a changed setting."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    cfg = config()
    del cfg["model"], cfg["data"]  # the run's sections were given; now defaults, one key set
    cfg["model"] = {"hidden": 64}
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(InputError) as error:
        train(None, cfg, out, progress="none")
    said = str(error.value)
    assert "data.features 8 -> None; data.size 20 -> None; model.dropout 0.2 -> None; model.features 8 -> None; " \
           "model.hidden 16 -> 64." in said, said  # fmt: skip
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    fresh = tmp_path / "fresh"
    train(None, {**config(), "model": {}, "train": {**config()["train"], "steps": 4}}, fresh, progress="none")
    again = {**config(), "model": {"hidden": 64}, "train": {**config()["train"], "steps": 4}}
    with pytest.raises(InputError) as error:
        train(None, again, fresh, progress="none")
    assert "other settings: model.hidden None -> 64. Resume" in str(error.value), str(error.value)


def test_the_recorded_command_runs_again_as_it_is(tmp_path):
    """`python -m CardiacDiffusionLib.training ...` is recorded so (before: `__main__.py --out ...`, which no shell
    runs); run again as recorded, in its folder, it is the same run: already done, nothing rewritten."""
    args = ["--out", "run dir", "task=toy", "train.steps=3", "train.batch_size=4", "data.size=8", "device=cpu",
            "--progress", "none"]  # fmt: skip
    first = subprocess.run([sys.executable, "-m", "CardiacDiffusionLib.training", *args], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    model = tmp_path / "run dir" / "model.safetensors"
    command = read_model_header(model)[2]["training_command"]
    assert command == "python -m CardiacDiffusionLib.training --out 'run dir' task=toy train.steps=3 " \
                      "train.batch_size=4 data.size=8 device=cpu --progress none"  # fmt: skip
    assert load_model(str(model)).architecture == "toy_mlp"
    before = model.read_bytes()
    again = subprocess.run(command.replace("python", sys.executable, 1), shell=True, cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already done at step 3" in again.stderr and model.read_bytes() == before

    entry = Path(sys.executable).with_name("cardiac-diffusion")  # the console script, as installed
    if entry.is_file():
        cli = subprocess.run([str(entry), "train", *args[:1], "cli", *args[2:]], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert cli.returncode == 0, cli.stderr[-2000:]
        assert read_model_header(tmp_path / "cli" / "model.safetensors")[2]["training_command"] == \
            "cardiac-diffusion train --out cli task=toy train.steps=3 train.batch_size=4 data.size=8 device=cpu " \
            "--progress none"  # fmt: skip


def test_out_of_memory_is_said_with_what_to_lower(tmp_path):
    """A model too big for any machine (32 PB of weights: the allocation fails at once). Before: torch's RuntimeError
    from deep inside nn.Linear (a traceback under `python -m CardiacDiffusionLib.training` and torchrun)."""
    cfg = {**config(), "model": {"hidden": 10**15}}
    with pytest.raises(InputError) as error:
        train(None, cfg, tmp_path / "run", progress="none")
    said = str(error.value)
    assert said.startswith("training: out of memory (") and "lower train.batch_size or the model's size" in said, said
    assert not (tmp_path / "run").exists()


def test_a_folder_of_another_task_says_so_first(straight, tmp_path):
    """`train tos --out <a toy run>`: refused, the task named first. Before: five model/data keys filled the list
    (`data.features 8 -> None; ...; ....`) and the other task was not said."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    with pytest.raises(InputError) as error:
        train(None, {**config(), "task": TOS, "model": {}, "data": {}}, out, progress="none")
    assert f"was trained with other settings: task 'toy' -> '{TOS}'; " in str(error.value), str(error.value)
