"""Masked-image SSL of a small 3D UNet and fine-tuning with the encoder kept, the decoder reset.

Net: MONAI ``BasicUNet``; its encoder is ``conv_0`` and ``down_1..4``, its decoder ``upcat_*`` and
``final_conv``. Pretraining (Hu et al.): MONAI ``RandCoarseDropout`` cuts 25 cubes with side 8-16
voxels at 64^3 (scaled with the volume: 4-8 at 32^3) with probability 0.8 per volume, filled
with 0 (mid-window grey); the net restores the whole image, L2 loss. Fine-tuning: Dice + CE.
Plain loops (not the runner): these are small, in-memory evaluation trainings of a few minutes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from monai.transforms import RandCoarseDropout
from torch import nn

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


def _batches(n: int, batch: int, steps: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield torch.from_numpy(rng.choice(n, batch, replace=n < batch))


def pretrain(images: torch.Tensor, steps: int, batch: int = 2, lr: float = 2e-3, seed: int = 0,
             features=FEATURES) -> tuple[BasicUNet, list[float]]:  # fmt: skip
    """Masked-image pretraining on ``images`` (N, 1, n, n, n); (net with 1 output channel, losses)."""
    torch.manual_seed(seed)
    net = build_unet(1, features)
    mask = masker(images.shape[-1], seed=seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    losses = []
    for idx in _batches(len(images), batch, steps, seed):
        target = images[idx]
        loss = F.mse_loss(net(mask_batch(target, mask)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return net, losses


def transfer_encoder(pretrained: nn.Module, out_channels: int, seed: int = 0, features=FEATURES) -> BasicUNet:
    """A fresh segmentation net with ``pretrained``'s encoder weights (decoder newly initialised)."""
    torch.manual_seed(seed)
    net = build_unet(out_channels, features)
    state = {k: v for k, v in pretrained.state_dict().items() if k.split(".")[0] in ENCODER}
    missing = net.load_state_dict(state, strict=False).missing_keys
    assert all(k.split(".")[0] not in ENCODER for k in missing), "encoder keys must all transfer"
    return net


def finetune(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int = 2,
             lr: float = 2e-3, seed: int = 0, flips: bool = True) -> list[float]:  # fmt: skip
    """Dice + CE training of ``net`` on (N, 1, ...) images and (N, ...) labels; the losses."""
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    net.train()
    for idx in _batches(len(images), batch, steps, seed):
        x, y = images[idx], labels[idx][:, None]
        if flips:  # cheap augmentation shared by every arm of the comparison
            for dim in (2, 3, 4):
                if torch.rand((), generator=gen) < 0.2:
                    x, y = x.flip(dim), y.flip(dim)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch: int = 4) -> torch.Tensor:
    net.eval()
    return torch.cat([net(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])
