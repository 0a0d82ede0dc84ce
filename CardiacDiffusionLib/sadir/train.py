"""Runner tasks: the SADIR model (``task: CardiacDiffusionLib.sadir.train:SadirTask``) and the plain 3D UNet
baseline on the same data (``...:UNetTask``). Presets: ``training/presets/sadir.yaml``, ``sadir_unet.yaml``.

Samples are MR phantoms (seeds ``first_seed`` ..; ED for even, ES for odd seeds) scanned as label-only
SAX stacks with a random gap (8-12 mm); every draw keeps a random subset of 3..all myocardium slices
(all of them half of the time), so the model sees any slice count from 3. Held-out test seeds start at
:data:`TEST_SEED`.

Atlas and network are optimised alternately (SADIR): the network by gradient steps with the atlas
fixed; at the steps listed in ``model.atlas_steps`` the atlas with the network fixed
(:func:`update_atlas`, on ``model.atlas_subjects`` training phantoms). The shipped Fréchet mean
(``atlas.py``) starts it.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn
from torch.utils.data import Dataset

from ..errors import InputError
from ..models.store import load_model, register_architecture, shipped_registry_path
from ..training.task import Task
from . import data
from .atlas import load_atlas, upsample_displacement
from .model import ARCHITECTURE, DEFAULTS, SadirModel, shape_fit, soft_dice
from .reconstruct import topology
from .warp import warp

TEST_SEED = 5000
VAL_SEED = 4000
UNET_ARCHITECTURE = "sadir_unet3d"


PACK_VERSION = 1


def phantom_samples(
    seeds, gap_range=(8.0, 12.0), size: int = data.MODEL_SIZE, rng_seed: int = 0, output_size: int = data.OUTPUT_SIZE,
) -> dict:  # fmt: skip
    """Training arrays of MR phantoms ``seeds`` (label-only SAX stacks, all myocardium slices, gap drawn
    from ``gap_range`` per phantom): soft truth at ``size``, truth at the output size, sparse slices, mask."""
    rng = np.random.default_rng([rng_seed, 31])
    keys = ("truth", "truth_fine", "sparse", "mask")
    arrays: dict[str, list] = {k: [] for k in keys}
    for seed in seeds:
        s = data.make_sample(int(seed), gap_mm=float(rng.uniform(*gap_range)), slices=None, size=size,
                             output_size=output_size)  # fmt: skip
        for k in keys:
            arrays[k].append(s[k])
    return {"truth": np.stack(arrays["truth"]).astype(np.float32), "truth_fine": np.stack(arrays["truth_fine"]).astype(bool),
            "sparse": np.stack(arrays["sparse"]).astype(bool), "mask": np.stack(arrays["mask"]).astype(bool)}  # fmt: skip


def pack_samples(
    path, seeds, val_seeds=range(VAL_SEED, VAL_SEED + 4), gap_range=(8.0, 12.0), workers: int = 1,
    size: int = data.MODEL_SIZE, output_size: int = data.OUTPUT_SIZE,
) -> None:  # fmt: skip
    """Write the training samples of ``seeds`` (and the validation phantoms) to one compressed ``.npz``,
    so training runs where SimpleITK (which the phantoms need) is not installed, e.g. a GPU server.
    Masks bit-packed along x; the model-size truth is not stored (the block average of the fine one)."""
    seeds = list(seeds)
    workers = max(1, min(int(workers), len(seeds)))
    chunks = [seeds[i::workers] for i in range(workers)]  # each chunk draws its own gaps: the pack records them
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(phantom_samples, chunks, [gap_range] * workers, [size] * workers, [c[0] for c in chunks],
                              [output_size] * workers))  # fmt: skip
    train = {k: np.concatenate([part[k] for part in parts]) for k in ("truth_fine", "sparse", "mask")}
    val = phantom_samples(val_seeds, gap_range, size, int(val_seeds[0]), output_size)
    arrays = {f"{prefix}{k}": np.packbits(v[k], axis=-1) for prefix, v in (("", train), ("val_", val)) for k in train}
    order = np.concatenate(chunks)
    np.savez_compressed(path, version=PACK_VERSION, seeds=order, val_seeds=np.asarray(val_seeds), **arrays)


def load_pack(
    path, prefix: str = "", size: int = data.MODEL_SIZE, output_size: int = data.OUTPUT_SIZE,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The samples of a :func:`pack_samples` file (``prefix`` "val_": its validation phantoms)."""
    if not Path(path).is_file():
        raise InputError(f"data.packed: file not found: {path}; make it with scripts/pack_sadir_phantoms.py")
    with np.load(path) as f:
        if int(f["version"]) != PACK_VERSION:
            raise InputError(f"data.packed {path}: pack version {int(f['version'])}, expected {PACK_VERSION}; pack again")
        sizes = {"truth_fine": output_size, "sparse": size, "mask": size}
        packed = {k: f[prefix + k] for k in sizes}
    if [packed[k].shape[-2] for k in sizes] != list(sizes.values()):
        raise InputError(f"data.packed {path}: samples of {packed['sparse'].shape[-2]}^3 / {packed['truth_fine'].shape[-2]}^3, "
                         f"the model needs {size}^3 / {output_size}^3; pack again")  # fmt: skip
    out = {k: np.unpackbits(packed[k], axis=-1, count=n).astype(bool) for k, n in sizes.items()}
    out["truth"] = np.stack([data.downsample(t, size) for t in out["truth_fine"]])
    return out


class PhantomMyocardium(Dataset):
    """Phantom samples, made here (``phantoms`` seeds from ``first_seed``) or read from ``packed``.
    ``fine``: also return the output-size truth (for ``model.fine_weight``)."""

    def __init__(
        self, phantoms: int = 160, first_seed: int = 0, gap_range=(8.0, 12.0), full_fraction: float = 0.5,
        size: int = data.MODEL_SIZE, output_size: int = data.OUTPUT_SIZE, packed: str | None = None,
        fine: bool = False, prefix: str = "",
    ):  # fmt: skip
        if packed:
            arrays = load_pack(packed, prefix, size, output_size)
        else:
            seeds = range(first_seed, first_seed + phantoms)
            arrays = phantom_samples(seeds, gap_range, size, first_seed, output_size)
        self.truth, self.truth_fine = arrays["truth"], arrays["truth_fine"]
        self.sparse, self.mask = arrays["sparse"], arrays["mask"]
        self.planes = [np.flatnonzero(m.any(axis=(1, 2))) for m in self.mask]
        self.full_fraction, self.fine = full_fraction, fine

    def __len__(self) -> int:
        return len(self.truth)

    def __getitem__(self, i: int):
        sparse, mask, planes = self.sparse[i].astype(np.float32), self.mask[i].astype(np.float32), self.planes[i]
        if np.random.uniform() > self.full_fraction and len(planes) > data.MIN_SLICES:
            keep = np.random.choice(planes, np.random.randint(data.MIN_SLICES, len(planes)), replace=False)
            drop = np.setdiff1d(planes, keep)
            sparse[drop] = 0
            mask[drop] = 0
        truth = torch.from_numpy(self.truth[i].astype(np.float32))[None]
        cond = torch.from_numpy(np.stack([sparse, mask]))
        if self.fine:
            return truth, cond, torch.from_numpy(self.truth_fine[i].astype(np.float32))[None]
        return truth, cond


def update_atlas(
    model: SadirModel, subjects: list[dict], iters: int = 30, lr: float = 0.03, batch: int = 8,
) -> dict[str, float]:  # fmt: skip
    """Atlas step of the alternating optimisation, the network fixed: the maps phi^-1 the model predicts
    from each subject's sparse slices are held, and the 64^3 atlas descends the training loss (SSD +
    1 - soft Dice of atlas o phi^-1 against the subject's truth) in ``iters`` Adam steps (values kept in [0, 1]);
    the 32^3 atlas is its block average (as the 32^3 truths are of the 64^3 ones).

    Not the closed-form mean of the subjects pulled back through phi (Joshi 2004): that needs phi itself,
    and the separately integrated forward flow is not the inverse of the discrete phi^-1 when the maps are
    strong (pulled-back subjects overlapped the atlas at Dice 0.81-0.86 where atlas o phi^-1 matched the
    subjects at 0.95). A step that would change the atlas's topology (>= 0.5: one shell, genus 0) is not
    taken. Returns the loss before/after, how far the atlas moved and whether the step was taken.
    """
    m = model.atlas_fine.shape[-1]
    disps, truths = [], []
    with torch.no_grad():
        for i in range(0, len(subjects), batch):
            part = subjects[i : i + batch]
            cond = torch.from_numpy(np.stack([np.stack([s["sparse"], s["mask"]]) for s in part])).to(model.atlas)
            disps.append(upsample_displacement(model.sample(cond)[2], m))
            truths.append(torch.from_numpy(np.stack([s["truth_fine"] for s in part]).astype(np.float32))[:, None])
    old = model.atlas_fine.detach().clone()
    delta = torch.zeros_like(old, requires_grad=True)  # in probability units: a logit would freeze 0/1 voxels
    opt = torch.optim.Adam([delta], lr=lr)
    history = []
    with torch.enable_grad():
        for it in range(iters + 1):
            atlas = (old + delta).clamp(0, 1)
            loss = 0.0
            for disp, truth in zip(disps, truths):
                moved = warp(atlas, disp)
                ssd, dice = shape_fit(moved, truth)
                loss = loss + (ssd + 1 - dice) * len(truth)
            loss = loss / len(subjects)
            history.append(float(loss.detach()))
            if it < iters:  # the last pass only measures
                opt.zero_grad()
                loss.backward()
                opt.step()
    new = (old + delta.detach()).clamp(0, 1)
    shape = topology(new[0, 0].cpu().numpy() >= 0.5)
    taken = bool(shape["ok"]) and history[-1] < history[0]
    if taken:
        model.atlas_fine.copy_(new)
        model.atlas.copy_(F.adaptive_avg_pool3d(new, model.atlas.shape[-1]))
    return {"atlas_loss_before": history[0], "atlas_loss_after": history[-1], "atlas_taken": float(taken),
            "atlas_change": float((new - old).abs().mean()), "atlas_topology_ok": float(shape["ok"]),
            "atlas_genus": float(shape["genus"]), "atlas_components": float(shape["components"])}  # fmt: skip


#: the model section's keys that SadirTask.build_model takes itself (the rest are SadirModel's DEFAULTS)
TRAINING_DEFAULTS = {"reg": 1e-6, "atlas_steps": [], "atlas_subjects": 32, "atlas_iters": 30, "atlas_lr": 0.03,
                     "fine_weight": 0.0, "atlas_dir": None, "atlas_from": None}  # fmt: skip


class SadirTask(Task):
    architecture = ARCHITECTURE
    model_signature = {**DEFAULTS, **TRAINING_DEFAULTS}  # None: untyped
    data_signature = PhantomMyocardium

    def build_model(self, config: dict) -> nn.Module:
        config = dict(config)
        own = {k: config.pop(k, default) for k, default in TRAINING_DEFAULTS.items()}
        atlas_dir = own["atlas_dir"] or shipped_registry_path().parent / "atlas"  # checkout or install
        self.reg = float(own["reg"])
        self.atlas_steps = {int(s) for s in own["atlas_steps"]}  # empty: the atlas stays fixed
        self.atlas_subjects = int(own["atlas_subjects"])
        self.atlas_iters, self.atlas_lr = int(own["atlas_iters"]), float(own["atlas_lr"])
        self.fine_weight = float(own["fine_weight"])  # loss on the output-size deformed atlas too
        atlas_from = own["atlas_from"]  # a stored SADIR model whose (learned) atlas starts training
        self.first_seed, self.packed = 0, None
        self.subjects_: list[dict] | None = None
        self.model_config_ = config
        model = SadirModel(config)
        n, m = model.atlas.shape[-1], model.atlas_fine.shape[-1]
        if atlas_from:
            source = load_model(atlas_from).module
            if source.atlas.shape != model.atlas.shape or source.atlas_fine.shape != model.atlas_fine.shape:
                raise InputError(f"model.atlas_from {atlas_from}: atlas sizes differ from the model's ({n}, {m})")
            model.atlas.copy_(source.atlas)
            model.atlas_fine.copy_(source.atlas_fine)
        else:
            model.atlas.copy_(torch.from_numpy(load_atlas(f"{atlas_dir}/sadir_myocardium_{n}.nii.gz"))[None, None])
            model.atlas_fine.copy_(torch.from_numpy(load_atlas(f"{atlas_dir}/sadir_myocardium_{m}.nii.gz"))[None, None])
        return model

    def build_dataset(self, config: dict) -> Dataset:
        self.first_seed = int(config.get("first_seed", 0))
        self.packed = config.get("packed")
        sizes = {"size": self.model_config_.get("size", data.MODEL_SIZE),
                 "output_size": self.model_config_.get("output_size", data.OUTPUT_SIZE)}  # fmt: skip
        self.data_sizes_ = sizes
        self.dataset_ = PhantomMyocardium(**{**sizes, **config}, fine=self.fine_weight > 0)
        return self.dataset_

    def parameters(self, model: nn.Module):
        return model.net.parameters()  # the atlas changes only in after_step (update_atlas)

    def after_step(self, model: nn.Module, step: int, averaged: nn.Module | None) -> dict[str, float] | None:
        if step not in self.atlas_steps:
            return None
        if self.subjects_ is None:  # training subjects with all their slices, the same at every atlas step
            self.subjects_ = self._atlas_subjects(model)
        # the exported (EMA) network predicts the maps
        predictor = averaged if averaged is not None else model
        training = predictor.training
        predictor.eval()
        metrics = update_atlas(predictor, self.subjects_, self.atlas_iters, self.atlas_lr)
        predictor.train(training)
        if averaged is not None:
            model.atlas.copy_(averaged.atlas)
            model.atlas_fine.copy_(averaged.atlas_fine)
        return metrics

    def _atlas_subjects(self, model: SadirModel) -> list[dict]:
        """The first ``atlas_subjects`` training phantoms: from the pack when training reads one (no
        SimpleITK needed there), else made here (gap 10 mm)."""
        if self.packed:
            d = self.dataset_
            return [{"sparse": d.sparse[i].astype(np.float32), "mask": d.mask[i].astype(np.float32),
                     "truth_fine": d.truth_fine[i]} for i in range(min(self.atlas_subjects, len(d)))]  # fmt: skip
        seeds = range(self.first_seed, self.first_seed + self.atlas_subjects)
        n, m = model.atlas.shape[-1], model.atlas_fine.shape[-1]
        return [data.make_sample(seed, slices=None, size=n, output_size=m) for seed in seeds]

    def loss(self, model: nn.Module, batch):
        truth, cond, *fine = batch
        return model.loss(truth, cond, self.reg, truth_fine=fine[0] if fine else None, fine_weight=self.fine_weight)

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if self.packed:
            val = PhantomMyocardium(packed=self.packed, prefix="val_", full_fraction=1.0, **self.data_sizes_)
        else:
            val = PhantomMyocardium(4, VAL_SEED, full_fraction=1.0, **self.data_sizes_)
        dices = []
        device = model.atlas.device
        for i in range(len(val)):
            truth, cond = val[i]
            _, moved, _ = model.sample(cond[None].to(device))
            truth = truth[None].to(device)
            dices.append(float(soft_dice((moved > 0.5).float(), (truth > 0.5).float())))
        return {"val_dice_32": float(np.mean(dices))}

    def model_config(self, config: dict) -> dict:
        return self.model_config_


# --- baseline: a plain 3D UNet mapping [sparse slices, mask] to the myocardium -----------------------
#: the 3D UNet baseline's settings
UNET_DEFAULTS = {"channels": [16, 32, 64, 128], "num_res_units": 1}


def build_unet(config: dict) -> nn.Module:
    channels = tuple(config.get("channels", UNET_DEFAULTS["channels"]))
    return UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=channels, strides=(2,) * (len(channels) - 1),
                num_res_units=int(config.get("num_res_units", UNET_DEFAULTS["num_res_units"])))  # fmt: skip


register_architecture(UNET_ARCHITECTURE, build_unet)


class UNetTask(Task):
    architecture = UNET_ARCHITECTURE
    model_signature, data_signature = UNET_DEFAULTS, PhantomMyocardium

    def build_model(self, config: dict) -> nn.Module:
        return build_unet(config)

    def build_dataset(self, config: dict) -> Dataset:
        return PhantomMyocardium(**config)

    def loss(self, model: nn.Module, batch):
        truth, cond = batch
        logits = model(cond)
        prob = torch.sigmoid(logits)
        dice = soft_dice(prob, truth).mean()
        bce = F.binary_cross_entropy_with_logits(logits, truth)
        return {"loss": bce + (1 - dice), "dice": dice.detach()}
