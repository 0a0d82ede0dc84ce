"""The training runner on the toy task (CPU, seconds): resume bit for bit, loss falls, progress, logs, DDP."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from matplotlib.image import imread
from safetensors.torch import load_file

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.training import load_config, parse_overrides, train
from CardiacDiffusionLib.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from CardiacDiffusionLib.training.toy import ToyTask

REPO = Path(__file__).resolve().parents[1]
# 20 items / batch 4 = 5 batches per epoch: 12 steps cross two epoch ends, step 6 is mid-epoch
BASE = {
    "task": "toy",
    "model": {"features": 8, "hidden": 16, "dropout": 0.2},
    "data": {"size": 20, "features": 8},
    "optim": {"lr": 0.01, "grad_clip": 1.0},
    "schedule": {"name": "cosine", "warmup_steps": 2},
    "train": {"steps": 12, "batch_size": 4, "checkpoint_every": 4, "ema_decay": 0.9, "seed": 3},
    "device": "cpu",
}


def config(**train_overrides) -> dict:
    cfg = copy.deepcopy(BASE)
    cfg["train"].update(train_overrides)
    return cfg


class InterruptedToy(ToyTask):
    """Sends ``sig`` to this process during its ``at``-th loss (as Ctrl-C or a kill would)."""

    def __init__(self, at: int, sig: int = signal.SIGTERM):
        self.at, self.sig, self.calls = at, sig, 0

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        return super().loss(model, batch)


class CrashingToy(ToyTask):
    """Dies (no checkpoint) during its ``at``-th loss, as a power cut would."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("simulated crash")
        return super().loss(model, batch)


def assert_same(a, b, where="state"):
    """Bitwise equality of nested states (tensors, arrays, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    result = train(ToyTask(), config(), out, progress="none")
    return out, result


def final_state(out: Path) -> dict:
    state = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    state.pop("config")
    return state


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]


def test_resume_after_cancel_is_bitwise_identical(straight, tmp_path):
    out, result = straight
    assert result.status == "done" and result.step == 12
    first = train(InterruptedToy(at=6), config(), tmp_path, progress="none")
    assert first.status == "cancelled" and first.step == 6
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000006.safetensors"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    second = train(ToyTask(), config(), tmp_path, progress="none")
    assert second.status == "done" and second.step == 12
    reference, resumed = final_state(out), final_state(tmp_path)
    assert_same(reference, resumed)  # model, EMA, optimiser, scheduler, scaler, RNG, counters
    assert reference["ema"]["n_averaged"].item() == 12
    assert losses(out) == losses(tmp_path)
    assert_same(load_file(out / "model.safetensors"), load_file(tmp_path / "model.safetensors"))


def test_resume_after_crash_redoes_lost_steps_identically(straight, tmp_path):
    out, _ = straight
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(CrashingToy(at=7), config(), tmp_path, progress="none")
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000004.safetensors"
    assert len(losses(tmp_path)) == 6  # steps 5, 6 logged but not checkpointed
    train(ToyTask(), config(), tmp_path, progress="none")
    assert_same(final_state(out), final_state(tmp_path))
    assert losses(out) == losses(tmp_path)  # the redone steps replaced, not duplicated


def test_other_seed_differs(straight, tmp_path):
    out, _ = straight
    train(ToyTask(), config(seed=4), tmp_path, progress="none")
    assert not torch.equal(final_state(out)["model"]["net.0.weight"], final_state(tmp_path)["model"]["net.0.weight"])


def test_loss_falls_on_toy_regression(tmp_path):
    cfg = config(steps=80, batch_size=8, checkpoint_every=80, ema_decay=0.0)
    cfg["data"]["size"] = 64
    cfg["model"]["dropout"] = 0.0
    cfg["optim"]["lr"], cfg["schedule"] = 0.03, {"name": "constant", "warmup_steps": 0}
    train(ToyTask(), cfg, tmp_path, progress="none")
    loss = [v for _, v in losses(tmp_path)]
    early, late = np.mean(loss[:8]), np.mean(loss[-8:])
    print(f"toy loss: first 8 steps {early:.3f}, last 8 {late:.4f}")
    assert late < 0.05 * early  # noise floor 0.0025; seen ~2.35 -> ~0.011


def test_progress_json_lines_and_logs(tmp_path, capsys):
    cfg = config(validate_every=6)
    result = train(ToyTask(), cfg, tmp_path, progress="json")
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]  # every stdout line is one JSON object
    assert events[0]["event"] == "start" and events[0]["total"] == 12 and events[-1]["event"] == "done"
    progress = [e for e in events if e["event"] == "progress"]
    for e in progress:
        assert {"stage", "step", "total", "loss", "eta_s", "progress", "message"} <= e.keys()
        assert e["stage"] == "train" and e["total"] == 12 and 0 < e["progress"] <= 1
    assert progress[0]["step"] == 1 and progress[-1]["step"] == 12 and progress[-1]["eta_s"] == 0
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [4, 8, 12]
    assert [e["step"] for e in events if e["event"] == "validate"] == [6, 12]
    assert events[-1]["model"] == str(result.model_path)
    # loss log: one train record per step, in order; validation records marked
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in records if "loss" in r)
    assert [r["stage"] for r in records if "val_mse" in r] == ["val", "val"]
    png = imread(tmp_path / "loss.png")
    assert png.shape == (400, 600, 4) and png[..., :3].std() > 0.05  # a drawn 6x4 in figure at 100 dpi


def test_cli_json_progress_and_sigterm_cancel(tmp_path):
    """A real child process: JSON lines only on stdout; SIGTERM -> checkpoint, 'cancelled', exit 130."""
    cmd = [sys.executable, "-m", "CardiacDiffusionLib.training", "--out", str(tmp_path), "--progress", "json",
           "task=toy", "device=cpu", "train.steps=100000", "train.checkpoint_every=100000", "data.size=16"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in child.stdout:
        lines.append(line)
        if json.loads(line)["event"] == "progress":
            child.send_signal(signal.SIGTERM)
            break
    rest, stderr = child.communicate(timeout=60)
    lines += rest.splitlines()
    events = [json.loads(line) for line in lines]
    assert child.returncode == 130, stderr
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "cancelled"
    step = events[-1]["step"]
    assert 1 <= step < 100000
    assert latest_checkpoint(tmp_path / "checkpoints").name == f"step_{step:08d}.safetensors"
    assert "resume with the same command" in stderr


def test_ddp_world_size_one_matches_single_process(straight, tmp_path, monkeypatch):
    """torchrun's variables -> gloo process group + DDP; with one rank the result is the plain one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    result = train(ToyTask(), config(), tmp_path, progress="none")
    assert result.status == "done" and not dist.is_initialized()  # joined, then left
    out, _ = straight
    assert_same(final_state(out)["model"], final_state(tmp_path)["model"])


def test_torchrun_two_ranks_on_cpu(tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank takes half of every epoch (64 items, batch 8 per rank:
    4 steps an epoch, not 8), only rank 0 writes (one log line a step, one model), and the loss falls."""
    steps = 120
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "CardiacDiffusionLib.training", "--out", str(tmp_path), "--progress", "json", "task=toy",
           "device=cpu", f"train.steps={steps}", "train.batch_size=8", "train.checkpoint_every=60", "optim.lr=0.01",
           "data.size=64"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-1500:]  # the cause is often at the top
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert events[0]["event"] == "start" and events[0]["world_size"] == 2
    assert [e["event"] for e in events].count("done") == 1  # rank 0 reports
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, steps + 1))
    assert log[-1]["epoch"] == (steps - 1) // 4  # 64 items / (2 ranks x 8)
    losses = [row["loss"] for row in log]
    assert np.mean(losses[-20:]) < 0.25 * np.mean(losses[:20]), (losses[:20], losses[-20:])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000060.safetensors",
                                                                           "step_00000120.safetensors"]  # fmt: skip
    assert (tmp_path / "model.safetensors").exists()


def test_init_from_a_stored_model(straight, tmp_path):
    out, _ = straight
    cfg = config(steps=1, ema_decay=0.0, init_from=str(out / "model.safetensors"))
    cfg["optim"]["lr"] = 0.0  # one step that changes nothing: the weights are those loaded
    train(ToyTask(), cfg, tmp_path, progress="none")
    assert_same(load_file(out / "model.safetensors"), load_file(tmp_path / "model.safetensors"))
    cfg["model"]["hidden"] = 32
    with pytest.raises(InputError, match="does not fit the task's model") as error:
        train(ToyTask(), cfg, tmp_path / "other", progress="none")
    assert "\n" not in str(error.value) and "size mismatch" in str(error.value)  # one line, not torch's key list
    cfg["train"]["init_from"] = str(REPO / "Resources" / "models" / "tos_regressor.safetensors")
    with pytest.raises(InputError, match="a tos_net model; task toy trains toy_mlp models"):
        train(ToyTask(), cfg, tmp_path / "third", progress="none")


def test_checkpoint_keeps_types(tmp_path):
    state = {"int_keys": {0: torch.arange(3), 5: {"step": torch.tensor(2.0)}}, "tuple": (3, (1, 2), None),
             "array": np.arange(4, dtype=np.uint32), "float": 0.1, "list": [torch.ones(2, 2), "x"]}  # fmt: skip
    back = load_checkpoint(save_checkpoint(tmp_path / "c.safetensors", state))
    assert_same(state, back)
    assert isinstance(back["tuple"], tuple) and back["array"].dtype == np.uint32
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "c.safetensors").read_bytes()[:-10])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_resume_refusals_and_error_event(straight, capsys):
    out, _ = straight
    with pytest.raises(InputError, match="holds a training run"):
        train(ToyTask(), config(), out, progress="none", resume=False)
    log_before = (out / "train_log.jsonl").read_text()
    other = config()
    other["model"]["hidden"] = 32
    capsys.readouterr()
    with pytest.raises(InputError, match=r"step_00000012.safetensors\) was trained with other settings: model.hidden 16 -> 32"):
        train(ToyTask(), other, out, progress="json")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "error" and "other settings" in events[-1]["message"]
    assert (out / "train_log.jsonl").read_text() == log_before  # the run was left as it was


def test_a_finished_run_asked_again_is_left_as_it_is(straight, tmp_path, capsys):
    """The same command again: nothing trained, the model file (whose hash a registry may hold) not rewritten;
    other settings than those a resume may change are refused before anything is written; a longer run resumes."""
    from CardiacDiffusionLib.cli.main import main

    out, first = straight
    model, config_json = (out / "model.safetensors").read_bytes(), (out / "config.json").read_text()
    again = train(ToyTask(), config(), out, progress="none")
    assert again.status == "done" and again.step == 12 and again.loss is None
    assert (out / "model.safetensors").read_bytes() == model
    changed = config()
    changed["optim"]["lr"] = 0.05
    changed["optim"]["name"] = "sgd"
    with pytest.raises(InputError, match=r"optim.lr 0.01 -> 0.05; optim.name 'adamw' -> 'sgd'\. Resume with the same"):
        train(ToyTask(), changed, out, progress="none")
    assert (out / "config.json").read_text() == config_json and (out / "model.safetensors").read_bytes() == model
    # a recipe: a finished first stage is passed over, and a typo in a later stage is found before any training
    argv = ["train", "toy", "--out", str(tmp_path / "w"), "--progress", "none", "device=cpu"]
    assert main([*argv, "second:train.stesp=5"]) == 2 and not (tmp_path / "w").exists()
    assert "stage second: config train.stesp: unknown key" in capsys.readouterr().err
    assert main(["train", "toy", "--out", str(tmp_path / "w"), "--stage", "second", "device=cpu"]) == 2
    assert "train stage first first" in capsys.readouterr().err
    assert main(argv) == 0
    capsys.readouterr()
    stamp = (tmp_path / "w" / "second" / "model.safetensors").stat().st_mtime_ns
    assert main([*argv, "second:train.steps=14"]) == 0  # first: already done; second: 4 more steps
    err = capsys.readouterr().err
    assert "stage first: already done at step 20, nothing trained" in err and "stage second done: 14 steps, final loss" in err
    assert (tmp_path / "w" / "second" / "model.safetensors").stat().st_mtime_ns != stamp


def test_settings_torch_or_the_task_would_refuse_are_config_errors(tmp_path, capsys):
    """Refused before any work with the key named, not a traceback from torch or a task's constructor; --data on
    a workflow that makes its own data says so; JSON progress carries the error as an event."""
    from CardiacDiffusionLib.cli.main import main

    for bad, said in (("optim.betas=0.9", "optim.betas"), ("optim.betas=[0.9]", "optim.betas"),
                      ("optim.lr=-1", "optim.lr"), ("train.num_workers=-1", "train.num_workers"),
                      ("train.batch_size=true", "train.batch_size"), ("train.seed=1.5", "train.seed"),
                      ("schedule.warmup_steps=1.5", "schedule.warmup_steps"), ("optim.lr=NaN", "optim.lr"),
                      ("train.ema_decay=[1]", "train.ema_decay"), ("train.init_from=3", "train.init_from"),
                      ("train.find_unused_parameters=maybe", "train.find_unused_parameters"),
                      ("model=3", "config model: 3; expected a mapping"),
                      ("schedule=cosine", "config schedule: 'cosine'; expected a mapping")):  # fmt: skip
        with pytest.raises(InputError, match=said):
            load_config(config(), [bad])
    tuple_betas = config()
    tuple_betas["optim"]["betas"] = (0.8, 0.9)  # the Python API may give a tuple
    assert load_config(tuple_betas)["optim"]["betas"] == (0.8, 0.9)
    assert load_config({"task": "toy", "model": None})["model"] == {}  # an empty YAML section (model:)
    assert load_config(config(), ["train.steps=1e3"])["train"]["steps"] == 1000
    for key in ("model.hiden", "data.sise"):
        cfg = load_config(config(), [f"{key}=3"])
        with pytest.raises(InputError, match=rf"config {key}: not a setting of task toy"):
            train(ToyTask(), cfg, tmp_path / key, progress="none")
    assert main(["train", "tos", "--data", str(tmp_path), "--out", str(tmp_path / "tos"), "--progress", "json",
                 "device=cpu", "train.steps=1"]) == 2  # fmt: skip
    captured = capsys.readouterr()
    assert "--data (config data.root): task CardiacDiffusionLib.activation.train_tos:TOSTask makes its own" in captured.err
    assert not (tmp_path / "tos").exists()
    assert json.loads(captured.out.splitlines()[-1])["event"] == "error"
    assert main(["train", "tos", "--data", str(tmp_path), "--out", str(tmp_path / "tos"), "device=cpu"]) == 2
    assert capsys.readouterr().err.count("error: --data (config data.root)") == 1  # said once, not by the bar too
    for argv in (["task=toy", "train.stesp=3"], ["dmcrv"]):
        assert main(["train", *argv, "--out", str(tmp_path / "j"), "--progress", "json"]) == 2
        captured = capsys.readouterr()
        assert [json.loads(line)["event"] for line in captured.out.splitlines()] == ["error"]
        assert captured.err.startswith("error: ") and not (tmp_path / "j").exists()


class BuggyToy(ToyTask):
    """A task whose own code raises "unexpected keyword argument": not to be blamed on the config."""

    def build_model(self, config):
        return torch.nn.Linear(3, 3, bias_typo=True)


class UnbuildableToy(ToyTask):
    """Fails if asked to build its model or data (a finished run asked again must not build them)."""

    def build_model(self, config):
        raise AssertionError("built")

    build_dataset = build_model


def test_a_task_bug_is_not_called_a_config_error(tmp_path):
    with pytest.raises(TypeError, match="bias_typo"):
        train(BuggyToy(), config(), tmp_path, progress="none")


def test_a_run_past_its_steps_is_exported_at_its_checkpoint(straight, tmp_path):
    """A run extended, cancelled at 16, then asked for 14 steps: its model.safetensors (from step 12) is stale, so the
    run is exported at 16 with the logged loss (not null); asked again it is left as it is, without building."""
    import shutil

    from CardiacDiffusionLib.models.store import read_model_header

    shutil.copytree(straight[0], tmp_path, dirs_exist_ok=True)
    assert read_model_header(tmp_path / "model.safetensors")[2]["steps"] == 12
    assert train(InterruptedToy(at=4), config(steps=20), tmp_path, progress="none").step == 16
    done = train(ToyTask(), config(steps=14), tmp_path, progress="none")
    assert (done.status, done.step, done.already) == ("done", 16, False)
    meta = read_model_header(tmp_path / "model.safetensors")[2]
    assert meta["steps"] == 16 and meta["final_loss"] == losses(tmp_path)[-1][1] == done.loss
    model = (tmp_path / "model.safetensors").read_bytes()
    again = train(UnbuildableToy(), config(steps=14), tmp_path, progress="none")
    assert (again.step, again.already, again.loss) == (16, True, None)
    assert (tmp_path / "model.safetensors").read_bytes() == model


def test_recipe_tasks_and_stage_references_checked_before_training(tmp_path, capsys):
    """A later stage's unknown task or a reference to a stage that is not an earlier one is refused before the first
    stage trains; a {stage:NAME} reference given on the command line is a reference, not a YAML mapping."""
    from CardiacDiffusionLib.cli.main import main

    argv = ["train", "toy", "--out", str(tmp_path / "w"), "--progress", "none", "device=cpu"]
    for bad, said in (("second:task=toyy", "stage second: config task: unknown task 'toyy'"),
                      ("second:train.init_from={stage:frist}", "stage second: config train.init_from: {stage:frist} "
                       "is not an earlier stage; earlier stages: first"),
                      ("first:train.init_from={stage:second}", "stage first: config train.init_from: {stage:second} "
                       "is not an earlier stage; earlier stages: none")):  # fmt: skip
        assert main([*argv, bad]) == 2
        assert said in capsys.readouterr().err
        assert not (tmp_path / "w").exists()
    assert main([*argv, "first:train.steps=2", "second:train.steps=1", "second:train.init_from={stage:first}"]) == 0
    saved = json.loads((tmp_path / "w" / "second" / "config.json").read_text())["train"]["init_from"]
    assert saved == str(tmp_path / "w" / "first" / "model.safetensors")


def test_config_file_and_overrides(tmp_path):
    assert parse_overrides(["train.steps=10", "optim.lr=1e-3", "optim.betas=[0.8, 0.9]", "task=toy",
                            "train.ema_decay=0", "schedule.name=cosine", "model.a.b=true"]) == {
        "train": {"steps": 10, "ema_decay": 0}, "optim": {"lr": 1e-3, "betas": [0.8, 0.9]}, "task": "toy",
        "schedule": {"name": "cosine"}, "model": {"a": {"b": True}}}  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text("task: toy\noptim:\n  lr: 1e-4\ntrain:\n  steps: 50\nmodel:\n  hidden: 4\n")
    cfg = load_config(path, ["train.steps=20", "data.size=32"])
    assert cfg["optim"]["lr"] == 1e-4 and isinstance(cfg["optim"]["lr"], float)  # YAML reads 1e-4 as text
    assert cfg["train"]["steps"] == 20 and cfg["train"]["batch_size"] == 8  # default kept
    assert cfg["model"] == {"hidden": 4} and cfg["data"] == {"size": 32}
    for bad, message in (("train.stepz=1", "unknown key"), ("train.steps", "key.sub=value"),
                         ("optim.name=lbfgs", "optim.name"), ("train.steps=0", "train.steps")):  # fmt: skip
        with pytest.raises(InputError, match=message):
            load_config(path, [bad])
