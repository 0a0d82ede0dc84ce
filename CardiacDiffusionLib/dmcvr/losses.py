"""Training losses a runner can call: segmentation (morphology net) and diffusion (encoder + denoiser).

Order as in DMCVR: train the morphology net with :func:`seg_loss` first; then train the semantic
encoder and the denoiser jointly with :func:`diffusion_loss` (optimise
``model.diffusion_parameters()``), the morphology net frozen and its code detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss
from torch import nn

from .model import DMCVRModel, to_diffusion_range

_DICE_FOCAL = DiceFocalLoss(softmax=True, to_onehot_y=True)


def seg_loss(seg_net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Dice + focal loss of a 4-class segmenter on [0, 1] images (B, 1, H, W).

    ``seg_net``: a :class:`DMCVRModel` (its morphology net is used) or any net giving logits
    (B, classes, H, W). ``labels``: (B, H, W) or (B, 1, H, W) integers in the project convention.
    """
    net = seg_net.morph_net if isinstance(seg_net, DMCVRModel) else seg_net
    if labels.ndim == 3:
        labels = labels[:, None]
    return _DICE_FOCAL(net(images), labels.long())


def diffusion_loss(model: DMCVRModel, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Epsilon-prediction MSE for [0, 1] images (B, 1, H, W) at uniformly drawn timesteps.

    z_sem comes from the semantic encoder with gradient (it learns only through this loss, as in
    DiffAE); the morphology code is computed without gradient (frozen morphology net).
    ``generator`` (on the CPU) fixes the drawn timesteps and noise.
    """
    x0 = to_diffusion_range(images)
    t = torch.randint(0, model.config["num_train_timesteps"], (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = model.scheduler.add_noise(x0, noise, t)
    with torch.no_grad():
        morph = model.morph_net.encode(images)
    eps = model.eps(x_t, t, model.semantic(images), morph.detach())
    return F.mse_loss(eps, noise)
