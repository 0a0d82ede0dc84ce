"""Masked-image SSL of a small 3D UNet and fine-tuning with the encoder kept, the decoder reset.

Net: MONAI ``BasicUNet``; its encoder is ``conv_0`` and ``down_1..4``, its decoder ``upcat_*`` and
``final_conv``. Pretraining (Hu et al.): MONAI ``RandCoarseDropout`` cuts 25 cubes with side 8-16
voxels at 64^3 (scaled with the volume: 4-8 at 32^3) with probability 0.8 per volume, filled
with 0 (mid-window grey); the net restores the whole image, L2 loss. Fine-tuning: Dice + CE.
Both train on in-memory tensors through the project's one training loop (``training.runner``),
in a temporary run folder, on the CPU.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from monai.transforms import RandCoarseDropout
from torch import nn
from torch.utils.data import Dataset

from ..training.runner import train
from ..training.task import Task

FEATURES = (8, 16, 16, 32, 32, 8)
ENCODER = ("conv_0", "down_1", "down_2", "down_3", "down_4")


def build_unet(out_channels: int, features=FEATURES) -> BasicUNet:
    return BasicUNet(spatial_dims=3, in_channels=1, out_channels=out_channels, features=tuple(features))


def masker(size: int, holes: int = 25, prob: float = 0.8, seed: int = 0) -> RandCoarseDropout:
    """The paper's masking (25 blocks of 8-16 voxels at 64^3, p=0.8), block sides scaled to ``size``."""
    lo, hi = max(1, round(8 * size / 64)), max(1, round(16 * size / 64))
    t = RandCoarseDropout(holes=holes, spatial_size=lo, max_spatial_size=hi, prob=prob, fill_value=0.0)
    t.set_random_state(seed)
    return t


def mask_batch(images: torch.Tensor, transform: RandCoarseDropout) -> torch.Tensor:
    """Each (1, D, H, W) volume of a batch masked by its own draw."""
    return torch.stack([torch.as_tensor(transform(x)) for x in images]).as_subclass(torch.Tensor)


class _Tensors(Dataset):
    """Items ``{"image": images[i]}`` (and ``"labels"``) of in-memory tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        item = {"image": self.images[i]}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


class _NetTask(Task):
    """A runner task around an already built ``net`` and in-memory data (trained in place)."""

    def __init__(self, net: nn.Module, data: _Tensors):
        self.net, self.data = net, data

    def build_model(self, config: dict) -> nn.Module:
        return self.net

    def build_dataset(self, config: dict) -> Dataset:
        return self.data


class _MaskedImageTask(_NetTask):
    def __init__(self, net: nn.Module, data: _Tensors, mask: RandCoarseDropout):
        super().__init__(net, data)
        self.mask = mask

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        target = batch["image"]
        return F.mse_loss(model(mask_batch(target, self.mask)), target)


class _SegmentationTask(_NetTask):
    def __init__(self, net: nn.Module, data: _Tensors, flips: bool):
        super().__init__(net, data)
        self.flips, self.loss_fn = flips, DiceCELoss(to_onehot_y=True, softmax=True)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        x, y = batch["image"], batch["labels"][:, None]
        if self.flips:  # cheap augmentation shared by every arm of the comparison (the runner seeds torch)
            for dim in (2, 3, 4):
                if torch.rand(()) < 0.2:
                    x, y = x.flip(dim), y.flip(dim)
        return self.loss_fn(model(x), y)


def _train(task: Task, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    """Train ``task``'s net in place with the runner; the loss of every step."""
    config = {"optim": {"lr": lr}, "device": "cpu",
              "train": {"steps": steps, "batch_size": batch, "seed": seed, "ema_decay": 0.0,
                        "checkpoint_every": steps, "keep_checkpoints": 1}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cardiac-diffusion-ssl-") as folder:
        train(task, config, folder, progress="none", resume=False)
        lines = (Path(folder) / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def pretrain(images: torch.Tensor, steps: int, batch: int = 2, lr: float = 2e-3, seed: int = 0,
             features=FEATURES) -> tuple[BasicUNet, list[float]]:  # fmt: skip
    """Masked-image pretraining on ``images`` (N, 1, n, n, n); (net with 1 output channel, losses)."""
    torch.manual_seed(seed)
    net = build_unet(1, features)
    task = _MaskedImageTask(net, _Tensors(images), masker(images.shape[-1], seed=seed))
    return net, _train(task, steps, batch, lr, seed)


def encoder_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's weights (``conv_0``, ``down_1..4``) of a BasicUNet."""
    return {k: v for k, v in net.state_dict().items() if k.split(".")[0] in ENCODER}


def load_encoder(net: nn.Module, pretrained: nn.Module) -> list[str]:
    """Copy ``pretrained``'s encoder weights into ``net`` (a shape mismatch raises RuntimeError); the encoder keys
    of ``net`` that ``pretrained`` lacks (none when both are BasicUNets of the same features)."""
    missing = net.load_state_dict(encoder_state(pretrained), strict=False).missing_keys
    return [k for k in missing if k.split(".")[0] in ENCODER]


def transfer_encoder(pretrained: nn.Module, out_channels: int, seed: int = 0, features=FEATURES) -> BasicUNet:
    """A fresh segmentation net with ``pretrained``'s encoder weights (decoder newly initialised)."""
    torch.manual_seed(seed)
    net = build_unet(out_channels, features)
    assert not load_encoder(net, pretrained), "encoder keys must all transfer"
    return net


def finetune(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int = 2,
             lr: float = 2e-3, seed: int = 0, flips: bool = True) -> list[float]:  # fmt: skip
    """Dice + CE training of ``net`` (in place) on (N, 1, ...) images and (N, ...) labels; the losses."""
    return _train(_SegmentationTask(net, _Tensors(images, labels), flips), steps, batch, lr, seed)


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch: int = 4) -> torch.Tensor:
    net.eval()
    return torch.cat([net(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])
