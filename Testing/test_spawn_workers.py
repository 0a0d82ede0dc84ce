"""DataLoader workers started by spawn (macOS, Windows): every training task's dataset pickles and a spawned worker
draws the same items as the main process; the runner keeps its workers over epochs and its augmentation stream
is the same under spawn and fork, and after a mid-epoch resume (runner.SeededItems)."""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from CardiacDiffusionLib.training import train
from CardiacDiffusionLib.training.checkpoint import latest_checkpoint, load_checkpoint
from CardiacDiffusionLib.training.runner import SeededItems
from CardiacDiffusionLib.training.task import get_task
from CardiacDiffusionLib.training.toy import ToyRegression, ToyTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py
ACDC = Path("/work/shared/data/acdc")


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def write_pairs(folder: Path, seeds) -> str:
    import SimpleITK as sitk

    from CardiacDiffusionLib.phantoms.ct import make_ct_phantom

    folder.mkdir(parents=True)
    for seed in seeds:
        image, labels = make_ct_phantom(seed, size=32)[:2]
        sitk.WriteImage(image, str(folder / f"c{seed}_image.nii.gz"))
        sitk.WriteImage(labels, str(folder / f"c{seed}_labels.nii.gz"))
    return str(folder)


def datasets(tmp: Path) -> dict[str, Dataset]:
    """Each registered training task's dataset, built by the task at tiny settings as the runner does."""
    from CardiacDiffusionLib.ldm.data import EncodedPairs  # here: a spawned worker imports this module
    from CardiacDiffusionLib.ldm.vae import JointVAE

    out = {"toy": get_task("toy").build_dataset({})}
    out["dmcvr_diffusion"] = get_task("dmcvr_diffusion").build_dataset({"phantoms": 1, "size": 32})
    # ACDC HDF5 (h5py) where the shared data is: read into arrays, no file handle kept
    dmcvr_seg = {"root": str(ACDC), "limit": 2} if ACDC.is_dir() else {"phantoms": 1}
    out["dmcvr_seg"] = get_task("dmcvr_seg").build_dataset({**dmcvr_seg, "size": 32})
    sadir = get_task("CardiacDiffusionLib.sadir.train:SadirTask")
    sadir.build_model({"size": 32, "output_size": 64, "channels": [8, 16, 32], "num_head_channels": 8})
    out["sadir"] = sadir.build_dataset({"phantoms": 2})
    out["sadir_unet"] = get_task("CardiacDiffusionLib.sadir.train:UNetTask").build_dataset({"phantoms": 2})
    out["tos"] = get_task("CardiacDiffusionLib.activation.train_tos:TOSTask").build_dataset({"phantoms": 4})
    pairs = get_task("CardiacDiffusionLib.ldm.tasks:VAETask").build_dataset({"phantoms": 2, "size": 32})
    out["ldm_vae"] = pairs
    vae = JointVAE({"channels": [8, 16], "num_res_blocks": 1, "latent_channels": 3, "norm_num_groups": 8}).eval()
    out["ldm_encoded"] = EncodedPairs(pairs, vae, 1)  # DiffusionTask with data.encoded_draws
    folders = {"real": write_pairs(tmp / "real", (0, 1)), "synthetic": write_pairs(tmp / "synthetic", (2,))}
    out["ctseg_ssl"] = get_task("CardiacDiffusionLib.ldm.seg_tasks:SSLTask").build_dataset(dict(folders))
    out["ctseg_finetune"] = get_task("CardiacDiffusionLib.ldm.seg_tasks:FinetuneTask").build_dataset(dict(folders))
    return out


class Each(Dataset):
    """Item ``(name, index, seed)``: that dataset's item as the runner's workers draw it."""

    def __init__(self, sets: dict[str, Dataset]):
        self.sets = {name: SeededItems(data) for name, data in sets.items()}

    def __len__(self) -> int:
        return sum(map(len, self.sets.values()))

    def __getitem__(self, key):
        name, index, seed = key
        return self.sets[name][(index, seed)]


def test_every_dataset_pickles_and_a_spawned_worker_draws_the_main_process_items(tmp_path):
    sets = datasets(tmp_path)
    keys = []
    for name, data in sets.items():
        back = pickle.loads(pickle.dumps(data))
        index = len(data) - 1
        assert same(SeededItems(data)[(index, 7)], SeededItems(back)[(index, 7)]), name  # same augmentation draws
        keys += [(name, 0, 11), (name, index, 12)]
    assert not same(SeededItems(sets["toy"])[(0, 11)], SeededItems(sets["toy"])[(0, 12)])  # the seed matters
    # one spawned worker for all (each start imports torch): collated batches equal the main process's
    loader = DataLoader(Each(sets), batch_size=1, sampler=keys, num_workers=1, multiprocessing_context="spawn")
    got = list(loader)
    assert len(got) == len(keys)
    for key, batch in zip(keys, got):
        assert same(batch, default_collate([Each(sets)[key]])), key


class PidRegression(ToyRegression):
    """ToyRegression items with the id of the process that made them."""

    def __getitem__(self, i: int):
        return (*super().__getitem__(i), torch.tensor(os.getpid()))


class PidToy(ToyTask):
    """The toy task recording which processes made its batches; SIGTERM to itself at its ``at``-th loss."""

    def __init__(self, at: int = 0):
        self.at, self.calls, self.pids = at, 0, set()

    def build_dataset(self, config: dict) -> Dataset:
        self.data_config = config
        return PidRegression(**config)

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.pids |= set(batch[2].tolist())
        return super().loss(model, batch[:2])


# 24 items / batch 4 = 6 batches per epoch: 14 steps cross two epoch ends, step 8 is mid-epoch; augmentation on
CONFIG = {
    "model": {"features": 8, "hidden": 16, "dropout": 0.2}, "data": {"size": 24, "jitter": 0.3},
    "optim": {"lr": 0.01}, "schedule": {"name": "cosine", "warmup_steps": 2}, "device": "cpu",
    "train": {"steps": 14, "batch_size": 4, "checkpoint_every": 4, "ema_decay": 0.9, "seed": 3, "num_workers": 1},
}  # fmt: skip


def final_state(out: Path) -> dict:
    state = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    state.pop("config")
    return state


def run(task: PidToy, out: Path, method: str):
    before = mp.get_start_method(allow_none=True)
    mp.set_start_method(method, force=True)  # as on macOS/Windows (spawn) or Linux (fork)
    try:
        return train(task, copy.deepcopy(CONFIG), out, progress="none")
    finally:
        mp.set_start_method(before, force=True)
        assert not mp.active_children()  # the run's workers ended with it


def test_runner_workers_persist_under_spawn_and_draw_as_under_fork_and_after_a_resume(tmp_path):
    spawned = PidToy()
    assert run(spawned, tmp_path / "spawn", "spawn").status == "done"
    assert len(spawned.pids) == 1 and os.getpid() not in spawned.pids  # one worker for all 3 epochs, not one each
    forked = PidToy()
    run(forked, tmp_path / "fork", "fork")
    reference = final_state(tmp_path / "spawn")
    assert same(reference, final_state(tmp_path / "fork"))  # model, EMA, optimiser, RNG: start method irrelevant
    first = run(PidToy(at=8), tmp_path / "resumed", "fork")
    assert first.status == "cancelled" and first.step == 8  # mid-epoch 2
    run(PidToy(), tmp_path / "resumed", "fork")
    assert same(reference, final_state(tmp_path / "resumed"))  # workers' augmentation too: (seed, epoch, position)
    plain = PidToy()
    train(plain, {**copy.deepcopy(CONFIG), "train": {**CONFIG["train"], "num_workers": 0}}, tmp_path / "w0",
          progress="none")  # fmt: skip
    assert plain.pids == {os.getpid()}
    w0 = final_state(tmp_path / "w0")["model"]
    assert not all(torch.equal(w0[k], reference["model"][k]) for k in w0)  # no workers: the global RNG's stream


def test_a_finished_run_leaves_no_model_behind(tmp_path):
    """matplotlib's tight_layout and the optimiser's construction leave cycles through _run's frame: the model,
    optimiser and data stayed (GPU memory too) until the garbage collector ran, e.g. into a recipe's next stage."""
    import gc
    import weakref

    from CardiacDiffusionLib.training import runner

    alive = []
    build = runner._LossModule.__init__

    def spy(self, task, model):
        build(self, task, model)
        alive.append(weakref.ref(model))

    gc.collect()
    enabled = gc.isenabled()
    gc.disable()  # the run must free it itself, not a collection that happens to come
    try:
        runner._LossModule.__init__ = spy
        train("toy", {"task": "toy", "train": {"steps": 4, "checkpoint_every": 2}}, tmp_path / "run", progress="none")
        assert alive and alive[0]() is None
    finally:
        runner._LossModule.__init__ = build
        if enabled:
            gc.enable()
