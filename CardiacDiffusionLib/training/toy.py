"""A tiny regression task (``task: toy``): checks the runner, a GPU setup or torchrun in seconds.

y = x . w + 0.05 noise for x ~ N(0, I); the items jitter x with numpy and python random and the
net has dropout, so every random stream the runner saves is used.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .task import Task


class ToyMLP(nn.Module):
    def __init__(self, features: int = 8, hidden: int = 32, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def build_toy_mlp(config: dict) -> ToyMLP:
    """Model-store builder of the ``toy_mlp`` architecture."""
    return ToyMLP(**config)


class ToyRegression(Dataset):
    def __init__(self, size: int = 64, features: int = 8, seed: int = 1234, jitter: float = 0.01, split: str = "train"):
        w = torch.randn(features, generator=torch.Generator().manual_seed(seed))  # the same w in both splits
        gen = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
        self.x = torch.randn(size, features, generator=gen)
        self.y = self.x @ w + 0.05 * torch.randn(size, generator=gen)
        self.jitter = jitter

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        scale = 1 + self.jitter * (random.random() - 0.5)
        shift = torch.from_numpy(np.random.normal(0, self.jitter, self.x.shape[1]).astype(np.float32))
        return self.x[i] * scale + shift, self.y[i]


class ToyTask(Task):
    architecture = "toy_mlp"
    model_signature, data_signature = ToyMLP, ToyRegression

    def build_model(self, config: dict) -> nn.Module:
        return build_toy_mlp(config)

    def build_dataset(self, config: dict) -> Dataset:
        self.data_config = config
        return ToyRegression(**config)

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        x = x + 0.01 * torch.randn_like(x)
        mse = F.mse_loss(model(x), y)
        return {"loss": mse, "rmse": mse.detach().sqrt()}

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        data = ToyRegression(**{**self.data_config, "size": 32, "split": "val"})
        return {"val_mse": float(F.mse_loss(model(data.x), data.y))}
