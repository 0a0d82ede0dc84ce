"""CPU thread policy on a busy machine (utils/device.py): fewer torch threads when other work keeps cores busy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from CardiacDiffusionLib.utils import device as D

REPO = Path(__file__).resolve().parents[1]
LINUX_STAT = pytest.mark.skipif(
    not (Path("/proc/stat").exists() and hasattr(os, "sched_setaffinity")), reason="needs Linux /proc/stat, affinity"
)


@pytest.mark.parametrize(
    "busy, cores, env, threads, to_set",
    [
        (0.0, 2, {}, 2, {}),  # quiet: every physical core
        (0.4, 2, {}, 2, {}),  # less than half a CPU busy: not counted
        (0.6, 2, {}, 1, {"OMP_NUM_THREADS": "1"}),  # more than half: one core taken
        (1.0, 2, {}, 1, {"OMP_NUM_THREADS": "1"}),  # one busy loop on 2 cores
        (2.0, 2, {}, 1, {"OMP_NUM_THREADS": "1"}),  # two busy loops: at least 1 thread
        (7.9, 4, {}, 1, {"OMP_NUM_THREADS": "1"}),  # more busy CPUs than cores (hyper-threads)
        (3.4, 8, {}, 5, {"OMP_NUM_THREADS": "5"}),  # 8 cores, 3 taken
        (None, 6, {}, 6, {}),  # load unreadable (macOS, Windows): as before
        (2.0, 2, {"OMP_NUM_THREADS": "2"}, 2, {}),  # the user's OMP_NUM_THREADS is kept, even under load
        (0.0, 8, {"OMP_NUM_THREADS": "4,2"}, 4, {}),  # an OpenMP list: its first level
        (1.0, 2, {"OMP_NUM_THREADS": "abc"}, 1, {"OMP_NUM_THREADS": "1"}),  # not a count: as unset
        (1.0, 2, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10"}, 1, {"OMP_NUM_THREADS": "1"}),  # kept as is
    ],
)
def test_thread_policy(busy, cores, env, threads, to_set):
    got, env_to_set, said = D.thread_policy(busy, cores, env)
    assert (got, env_to_set) == (threads, to_set)
    assert said.startswith(f"{threads} CPU threads")
    assert not set(env_to_set) & {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"}  # never set by the policy


def _busy_loop(cpu: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while 1: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


@LINUX_STAT
def test_busy_cpus_sees_a_busy_loop():
    """A busy loop on one CPU this process may use is measured as about one busy CPU (other work may add)."""
    allowed = sorted(os.sched_getaffinity(0))
    loop = _busy_loop(allowed[0])
    try:
        busy = D.busy_cpus(0.3)
    finally:
        loop.kill()
        loop.wait()
    assert busy is not None and 0.8 <= busy <= len(allowed) + 0.05


def test_in_process_callers_keep_their_threads(monkeypatch):
    """Once torch is loaded (a test, Slicer's Python) the policy changes nothing."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    assert D.auto_cpu_threads() is None
    assert "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() == before


_CHILD = """
import os, sys
from CardiacDiffusionLib.cli.main import main
assert 'torch' not in sys.modules
rc = main(['sample', '--n', '0', '--out', 'never'])  # refused (2) after the thread choice
import torch
print(rc, torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))
"""


@LINUX_STAT
def test_cli_uses_fewer_threads_on_busy_cores(tmp_path):
    """Two busy loops on the two CPUs the command may use: it starts torch with 1 thread (OMP_NUM_THREADS set
    before torch loads, so OpenMP and child processes get it); a user's OMP_NUM_THREADS=2 is kept."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs 2 CPUs")
    cpus = set(allowed[:2])
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(CARDIAC_DIFFUSION_HOME=str(tmp_path), PYTHONPATH=str(REPO))

    def child(**extra) -> list[str]:
        done = subprocess.run([sys.executable, "-c", _CHILD], env={**env, **extra}, capture_output=True, text=True,
                              preexec_fn=lambda: os.sched_setaffinity(0, cpus), timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()[-3:]

    loops = [_busy_loop(cpu) for cpu in sorted(cpus)]
    try:
        assert child() == ["2", "1", "1"]
        assert child(OMP_NUM_THREADS="2") == ["2", "2", "2"]
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()



@pytest.mark.parametrize("argv, loads", [
    (["models", "list"], False), (["phantom", "--out", "x"], False), (["inspect", "--sax", "s.nii.gz"], False),
    (["lax-dice", "--labels", "l.nii.gz", "--lax-labels", "a.nii.gz"], False),
    (["reconstruct", "--sax", "s.nii.gz", "--out", "x"], False),
    (["reconstruct", "--method", "dmcvr", "--sax", "s.nii.gz", "--out", "x"], True),
    (["sample", "--out", "x"], True), (["lma", "--slices", "s.nii.gz", "--tos-csv", "t.csv", "--out", "x"], True),
    (["train", "toy", "--out", "x"], True)])  # fmt: skip
def test_the_load_is_sampled_only_for_commands_that_load_torch(argv, loads):
    """The load is sampled for 0.1 s at the start: not for the commands that never import torch (the classical
    reconstructions take well under a second; `-X importtime` shows no torch for these)."""
    from CardiacDiffusionLib.cli.main import _loads_torch, build_parser
    from CardiacDiffusionLib.training.cli import parse

    assert _loads_torch(parse(build_parser(), argv)) is loads
