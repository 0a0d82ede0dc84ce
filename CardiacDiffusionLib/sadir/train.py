"""Runner tasks: the SADIR model (``task: CardiacDiffusionLib.sadir.train:SadirTask``) and the plain 3D UNet
baseline on the same data (``...:UNetTask``). Presets: ``training/presets/sadir.yaml``, ``sadir_unet.yaml``.

Samples are MR phantoms (seeds ``first_seed`` ..; ED for even, ES for odd seeds) scanned as label-only
SAX stacks with a random gap (8-12 mm); every draw keeps a random subset of 3..all myocardium slices
(all of them half of the time), so the model sees any slice count from 3. Held-out test seeds start at
:data:`TEST_SEED`. The atlas is fixed during training (built beforehand by ``atlas.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn
from torch.utils.data import Dataset

from ..models.store import register_architecture
from ..training.task import Task
from . import data
from .atlas import load_atlas
from .model import ARCHITECTURE, SadirModel, soft_dice

TEST_SEED = 5000
VAL_SEED = 4000
UNET_ARCHITECTURE = "sadir_unet3d"


class PhantomMyocardium(Dataset):
    def __init__(self, phantoms: int = 160, first_seed: int = 0, gap_range=(8.0, 12.0), full_fraction: float = 0.5):
        rng = np.random.default_rng([first_seed, 31])
        self.samples = []
        for seed in range(first_seed, first_seed + phantoms):
            s = data.make_sample(seed, gap_mm=float(rng.uniform(*gap_range)), slices=None)
            planes = np.flatnonzero(s["mask"].any(axis=(1, 2)))
            self.samples.append((s["truth"], s["sparse"], s["mask"], planes))
        self.full_fraction = full_fraction

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        truth, sparse, mask, planes = self.samples[i]
        if np.random.uniform() > self.full_fraction and len(planes) > data.MIN_SLICES:
            keep = np.random.choice(planes, np.random.randint(data.MIN_SLICES, len(planes)), replace=False)
            drop = np.setdiff1d(planes, keep)
            sparse, mask = sparse.copy(), mask.copy()
            sparse[drop] = 0
            mask[drop] = 0
        cond = torch.from_numpy(np.stack([sparse, mask]))
        return torch.from_numpy(truth)[None], cond


class SadirTask(Task):
    architecture = ARCHITECTURE

    def build_model(self, config: dict) -> nn.Module:
        config = dict(config)
        atlas_dir = config.pop("atlas_dir", "Resources/atlas")
        self.reg = float(config.pop("reg", 1e-6))
        self.model_config_ = config
        model = SadirModel(config)
        n, m = model.atlas.shape[-1], model.atlas_fine.shape[-1]
        model.atlas.copy_(torch.from_numpy(load_atlas(f"{atlas_dir}/sadir_myocardium_{n}.nii.gz"))[None, None])
        model.atlas_fine.copy_(torch.from_numpy(load_atlas(f"{atlas_dir}/sadir_myocardium_{m}.nii.gz"))[None, None])
        return model

    def build_dataset(self, config: dict) -> Dataset:
        return PhantomMyocardium(**config)

    def parameters(self, model: nn.Module):
        return model.net.parameters()  # the atlas is fixed

    def loss(self, model: nn.Module, batch):
        truth, cond = batch
        return model.loss(truth, cond, self.reg)

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        val = PhantomMyocardium(4, VAL_SEED, full_fraction=1.0)
        dices = []
        for truth, sparse, mask, _ in val.samples:
            cond = torch.from_numpy(np.stack([sparse, mask]))[None]
            _, moved, _ = model.sample(cond)
            dices.append(float(soft_dice((moved > 0.5).float(), torch.from_numpy(truth > 0.5).float()[None, None])))
        return {"val_dice_32": float(np.mean(dices))}

    def model_config(self, config: dict) -> dict:
        return self.model_config_


# --- baseline: a plain 3D UNet mapping [sparse slices, mask] to the myocardium -----------------------
def build_unet(config: dict) -> nn.Module:
    channels = tuple(config.get("channels", (16, 32, 64, 128)))
    return UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=channels,
                strides=(2,) * (len(channels) - 1), num_res_units=int(config.get("num_res_units", 1)))  # fmt: skip


register_architecture(UNET_ARCHITECTURE, build_unet)


class UNetTask(Task):
    architecture = UNET_ARCHITECTURE

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
