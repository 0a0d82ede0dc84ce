"""The training runner's durability: files flushed before their rename (a power loss keeps whole files), the loss
curve written whole, one voice under torchrun, a rank out of memory ending the run at once, and a cancel asked
while the data is built."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib.image
import pytest
import torch
from matplotlib.figure import Figure

from CardiacDiffusionLib.training import train
from CardiacDiffusionLib.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from CardiacDiffusionLib.training.losslog import LossLog

REPO = Path(__file__).resolve().parents[1]
# 20 items / batch 4: 5 steps an epoch; checkpoints at 4 and 8
BASE = {"task": "toy", "model": {"features": 8, "hidden": 16, "dropout": 0.2}, "data": {"size": 20, "features": 8},
        "optim": {"lr": 0.01}, "train": {"steps": 8, "batch_size": 4, "checkpoint_every": 4, "ema_decay": 0.9,
                                         "seed": 5}, "device": "cpu"}  # fmt: skip

#: tasks for the runs below, a module put on the path (also of torchrun's processes)
TASKS = '''
import os, signal, threading, time, torch
from CardiacDiffusionLib.training.toy import ToyTask

class OutOfMemoryOnRank1(ToyTask):
    """Rank 1's third step fails as a GPU out of memory does."""
    calls = 0
    def loss(self, model, batch):
        OutOfMemoryOnRank1.calls += 1
        if os.environ.get("RANK") == "1" and OutOfMemoryOnRank1.calls >= 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return super().loss(model, batch)

class Rank1KilledAtTheEnd(ToyTask):
    """Rank 1 is killed (a second SIGTERM) 1 s after its last step, waiting for rank 0, which exports for 4 s."""
    def after_step(self, model, step, averaged):
        if os.environ.get("RANK") == "1" and step == 4:
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    def model_config(self, config):
        time.sleep(4)
        return super().model_config(config)

class SecondCtrlC(ToyTask):
    """The second Ctrl-C of a user: the runner's handler raises KeyboardInterrupt in the step."""
    def loss(self, model, batch):
        raise KeyboardInterrupt

class TermDuringBuild(ToyTask):
    """A SIGTERM (the Slicer panel's cancel) arrives while the data is built."""
    def build_dataset(self, config):
        os.kill(os.getpid(), signal.SIGTERM)
        return super().build_dataset(config)
'''


@pytest.fixture
def tasks(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "durability_tasks.py").write_text(textwrap.dedent(TASKS))
    monkeypatch.syspath_prepend(str(folder))
    return folder


def config(**train) -> dict:
    cfg = json.loads(json.dumps(BASE))
    cfg["train"].update(train)
    return cfg


@pytest.fixture
def disk_calls(monkeypatch) -> list[tuple]:
    """Every ``os.fsync`` (the path of its descriptor, its size) and ``os.replace`` (source, target), in order."""
    calls: list[tuple] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size))
        return fsync(fd)

    def spy_replace(src, dst, **kw):
        calls.append(("replace", str(Path(src).resolve()), str(Path(dst).resolve())))
        return replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    return calls


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names descriptors through /proc (Linux)")
def test_every_file_renamed_into_the_run_folder_is_flushed_first_and_its_folder_after(tmp_path, disk_calls):
    """A power loss after a rename whose data was never flushed can leave an empty newest checkpoint (or config,
    curve, model): the file is fsynced before its rename, the folder after it, and the log before each checkpoint.
    Before: no fsync at all. (The power loss itself cannot be tested here; the order of the calls can.)"""
    out = (tmp_path / "run").resolve()
    assert train(None, config(), out, progress="none").status == "done"
    renames = [c for c in disk_calls if c[0] == "replace" and not Path(c[2]).name.startswith(".partial_")]
    targets = sorted({Path(c[2]).name for c in renames})
    assert targets == ["config.json", "loss.png", "model.safetensors", "step_00000004.safetensors",
                       "step_00000008.safetensors"], targets  # fmt: skip
    synced = [c[1] for c in disk_calls]
    for _, src, dst in renames:
        at = disk_calls.index(("replace", src, dst))
        assert src in synced[:at], f"{src} renamed to {dst} unflushed"
        assert str(Path(dst).parent) in synced[at + 1 :], f"folder of {dst} not flushed after"
    lines = (out / "train_log.jsonl").read_bytes().splitlines(keepends=True)
    for step in (4, 8):  # the log's records up to the checkpoint reach the disk before it
        name = f"step_{step:08d}.safetensors"
        at = next(i for i, c in enumerate(disk_calls) if c[0] == "replace" and c[2].endswith(name))
        logged = [c[2] for c in disk_calls[:at] if c[1] == str(out / "train_log.jsonl")]
        assert logged and logged[-1] == len(b"".join(lines[:step])), (step, logged)
    assert sum(c[0] == "fsync" for c in disk_calls) < 30  # once a file, not once a step: 8 steps, 5 files, 2 checkpoints


def test_a_folder_that_refuses_fsync_still_gets_its_checkpoint(tmp_path, monkeypatch):
    """Windows cannot open a folder and some file systems refuse a folder's fsync: skipped, the file is whole."""
    opened = os.open

    def no_folders(path, flags, *args):
        if Path(path).is_dir():
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return opened(path, flags, *args)

    monkeypatch.setattr(os, "open", no_folders)
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    path = save_checkpoint(tmp_path / "a.safetensors", state)
    assert load_checkpoint(path)["step"] == 3 and torch.equal(load_checkpoint(path)["w"], state["w"])
    monkeypatch.setattr(os, "open", opened)

    fsync = os.fsync

    def no_folder_fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", no_folder_fsync)
    assert load_checkpoint(save_checkpoint(tmp_path / "b.safetensors", state))["step"] == 3


def test_a_crash_while_the_loss_curve_is_written_keeps_the_last_whole_picture(tmp_path, monkeypatch):
    """The PNG was written in place: a kill or full disk mid-write left a broken loss.png. Now it is written beside
    and renamed: the last whole picture stays and no partial file is left."""
    log = LossLog(tmp_path / "train_log.jsonl")
    for step in range(1, 13):
        log.append({"step": step, "loss": 1.0 / step})
    png = log.plot(tmp_path / "loss.png")
    before = png.read_bytes()
    assert matplotlib.image.imread(png).shape[:2] == (400, 600)  # 6 x 4 in at 100 dpi
    log.append({"step": 13, "loss": 0.05})
    savefig = Figure.savefig

    def cut_short(self, fname, **kw):  # half the picture written, then the process dies (here: the disk is full)
        import io

        buf = io.BytesIO()
        savefig(self, buf, **kw)
        Path(fname).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", cut_short)
    with pytest.raises(OSError):
        log.plot(tmp_path / "loss.png")
    assert png.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "train_log.jsonl"]


@pytest.mark.parametrize("entry", ["training", "cardiac-diffusion"])
def test_only_rank_zero_says_cancelled_after_a_second_ctrl_c(tasks, tmp_path, capsys, monkeypatch, entry):
    """Under torchrun a Ctrl-C reaches every rank: after the second, each one printed `cancelled`. Now rank 0 alone
    says it; every rank still exits 130."""
    if entry == "training":
        from CardiacDiffusionLib.training.cli import main
    else:
        from CardiacDiffusionLib.cli.main import main
    argv = ["--out", str(tmp_path / "r"), "task=durability_tasks:SecondCtrlC", "device=cpu", "train.steps=2",
            "data.size=8", "--progress", "none"]  # fmt: skip
    argv = argv if entry == "training" else ["train", *argv]
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 130
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == "cancelled"


def test_a_stop_asked_while_the_data_is_built_starts_no_step(tasks, tmp_path):
    """SIGTERM during a long data build (the workflows' own loops over subjects, which the runner cannot enter) is
    honoured as the build returns: no step, no checkpoint, no file. Before: one step was trained and checkpointed.
    A resumed run keeps its files as they were."""
    out = tmp_path / "run"
    result = train("durability_tasks:TermDuringBuild", config(), out, progress="none")
    assert (result.status, result.step, result.checkpoint) == ("cancelled", 0, None)
    assert not out.exists()

    assert train(None, config(steps=4), out, progress="none").status == "done"
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = train("durability_tasks:TermDuringBuild", config(), out, progress="none")
    assert (result.status, result.step, result.checkpoint) == ("cancelled", 4, latest_checkpoint(out / "checkpoints"))
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_out_of_memory_on_one_rank_ends_the_torchrun_run_at_once(tasks, tmp_path):
    """torchrun, 2 CPU processes (gloo); rank 1 runs out of memory at its third step. Its exit closes the group:
    rank 0's next collective fails at once and torchrun stops. The OOM is said once, in one line; rank 0 says in one
    line that another process stopped (before: torch's gloo traceback, `Connection closed by peer`), never waits for
    the backend's timeout (30 min for gloo)."""
    done, took = torchrun(tasks, tmp_path / "run", "OutOfMemoryOnRank1", "train.steps=200")
    err = done.stderr
    assert done.returncode != 0
    assert took < 60, f"{took:.0f} s"  # a bound far below the backend's timeout, not a speed measure
    oom = [line for line in err.splitlines() if "out of memory" in line]
    assert oom == ["error: training: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB (simulated)): lower "
                   "train.batch_size or the model's size (model.*), or train where there is more memory"], err[-3000:]  # fmt: skip
    assert "[rank0]: Traceback" not in err and "[rank1]: Traceback" not in err, err[:3000]
    peer = [line for line in err.splitlines() if "stopped because another process" in line]
    assert len(peer) <= 1 and all(line.startswith("error: training: process 0 of 2 stopped because another process "
                                                  "of the run did (") for line in peer), peer  # fmt: skip


def torchrun(tasks: Path, out: Path, task: str, *settings: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "CardiacDiffusionLib.training", "--out", str(out), "--progress", "none", f"task=durability_tasks:{task}",
           "device=cpu", "train.batch_size=4", "data.size=64", *settings]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tasks)]), "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    return done, time.monotonic() - t0


@pytest.mark.slow
def test_a_rank_killed_after_its_work_leaves_rank_zero_done(tasks, tmp_path):
    """A second SIGTERM kills a rank that waits at the final barrier while rank 0 still checkpoints or exports: rank 0's
    work is whole, it says so (`done`, the model written), not a gloo traceback at the barrier nor an error."""
    done, _ = torchrun(tasks, tmp_path / "run", "Rank1KilledAtTheEnd", "train.steps=4")
    err = done.stderr
    assert "[rank0]: Traceback" not in err and "error:" not in err, err[:3000]
    assert "done: 4 steps, final loss" in err, err[:3000]
    assert (tmp_path / "run" / "model.safetensors").is_file()
