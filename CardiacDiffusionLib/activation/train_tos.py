"""Training task of the TOS regressor on the activation phantom (``task: tos`` via the runner).

Each item is one sector of one slice: its strain with its two neighbours, on the model's time
grid, and the phantom's true TOS floored at the first frame (no onset is visible earlier).
Phantoms are drawn with random frame rates (resampled like at inference), heights, noise, per-slice
angle offsets (DENSE's per-slice insertion points) and both patterns; seeds from ``first_seed``.
Held-out test seeds start at :data:`TEST_SEED` (never trained on).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..phantoms.activation import ActivationPhantom
from ..training.task import Task
from .regressor import ARCHITECTURE, TOSNet, build_tos_net, resample, sector_inputs

TEST_SEED = 100_000
FRAME_CHOICES_MS = (15.0, 17.0, 20.0, 25.0)


def phantom_sample(seed: int, frames: int, frame_ms: float, n_slices: int = 3, rng=None):
    """(strain on the model grid (n_slices, 18, frames), truth TOS (n_slices, 18), input frame_ms)."""
    rng = rng or np.random.default_rng([seed, 17])
    pattern = "lbbb" if rng.uniform() < 0.7 else "normal"
    phantom = ActivationPhantom(seed, pattern)
    in_ms = float(rng.choice(FRAME_CHOICES_MS))
    n_in = int(np.ceil(680.0 / in_ms))
    heights = np.sort(rng.uniform(0.1, 0.9, n_slices))
    offsets = rng.uniform(-0.3, 0.3, n_slices)
    noise = rng.uniform(0.002, 0.008)
    strain = phantom.strain_matrices(n_slices, 18, n_in, in_ms, heights=heights, noise=noise, angle_offsets=offsets)
    truth = np.maximum(phantom.sector_tos(n_slices, 18, heights, offsets), in_ms)
    return resample(strain, in_ms, frames, frame_ms), truth, in_ms


class PhantomSectors(Dataset):
    def __init__(self, phantoms: int = 400, first_seed: int = 0, frames: int = 40, frame_ms: float = 17.0,
                 jitter: float = 0.1):  # fmt: skip
        xs, ys = [], []
        for seed in range(first_seed, first_seed + phantoms):
            strain, truth, _ = phantom_sample(seed, frames, frame_ms)
            xs.append(sector_inputs(strain))
            ys.append(truth.reshape(-1))
        self.x = torch.from_numpy(np.concatenate(xs)).float()
        self.y = torch.from_numpy(np.concatenate(ys)).float()
        self.jitter = jitter

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        scale = 1.0 + self.jitter * (2 * np.random.uniform() - 1)  # amplitude varies between patients
        return self.x[i] * float(scale), self.y[i]


class TOSTask(Task):
    architecture = ARCHITECTURE
    model_signature, data_signature = TOSNet, PhantomSectors

    def build_model(self, config: dict) -> nn.Module:
        self.model_config_ = dict(config)
        return build_tos_net(config)

    def build_dataset(self, config: dict) -> Dataset:
        self.data_config = dict(config)
        return PhantomSectors(**config)

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        x = x + 0.002 * torch.randn_like(x)
        pred = model(x)
        loss = F.smooth_l1_loss(pred / 100.0, y / 100.0, beta=0.05)  # in 100 ms units
        return {"loss": loss, "mae_ms": (pred.detach() - y).abs().mean()}

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        frames, frame_ms = model.frames, model.frame_ms
        data = PhantomSectors(20, TEST_SEED, frames, frame_ms, jitter=0.0)
        return {"val_mae_ms": float((model(data.x) - data.y).abs().mean())}
