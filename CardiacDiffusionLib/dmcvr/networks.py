"""The three networks of DMCVR, built from MONAI.

- :class:`SemanticEncoder`: image -> global semantic vector z_sem (DiffAE's "half UNet" role: a
  convolutional encoder, global average pool, linear). Trained with the denoiser through the
  diffusion loss only.
- :class:`MorphologyNet`: 2D segmentation net (MONAI ``BasicUNet``, 4 classes: background,
  LV cavity, LV myocardium, RV cavity). Its encoder features at 1/2**level resolution are the
  regional morphology code (DMCVR takes MedFormer's ``down4`` output the same way).
- :class:`ConditionalDenoiser`: MONAI ``DiffusionModelUNet`` predicting epsilon, conditioned on
  z_sem (AdaGN scale/shift in every ResBlock) and on the morphology code (extra input channels).

Intensity ranges: the denoiser and the semantic encoder work in the diffusion range [-1, 1]; the
morphology net sees the [0, 1] image (as a stand-alone segmenter would). :mod:`.model` maps.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, DiffusionModelUNet, ResNet
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock
from torch import nn


class SemanticEncoder(nn.Module):
    """Image (B, 1, H, W) in [-1, 1] -> z_sem (B, z_dim); any H, W (global average pooling).

    MONAI's ``DiffusionModelEncoder`` would also do, but it flattens the last feature map into a
    linear layer, which ties the weights to one image size; DiffAE pools globally, as MONAI's
    ``ResNet`` (GroupNorm, no max-pool) does.
    """

    def __init__(self, z_dim: int = 128, channels: Sequence[int] = (16, 32, 64, 128), groups: int = 8):
        super().__init__()
        self.net = ResNet(
            "basic", [1] * len(channels), list(channels), spatial_dims=2, n_input_channels=1,
            conv1_t_size=3, conv1_t_stride=2, no_max_pool=True, num_classes=z_dim,
            norm=("group", {"num_groups": groups}),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MorphologyNet(nn.Module):
    """4-class 2D segmenter (MONAI ``BasicUNet``) whose encoder features are the morphology code.

    ``encode`` runs the encoder path up to ``down_<level>`` (resolution 1/2**level, channels
    ``features[level]``); ``forward`` gives logits (B, num_classes, H, W). Input in [0, 1];
    H and W must be multiples of 16 (BasicUNet pools four times).
    """

    def __init__(self, features: Sequence[int] = (16, 16, 32, 32, 64, 16), level: int = 3, num_classes: int = 4):
        super().__init__()
        if not 1 <= level <= 4:
            raise ValueError(f"morphology level must be 1..4, got {level}")
        self.net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=num_classes, features=tuple(features))
        self.level = level
        self.code_channels = int(features[level])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net.conv_0(x)
        for i in range(1, self.level + 1):
            h = getattr(self.net, f"down_{i}")(h)
        return h


class _StyleSlot:
    """Holds the current z_sem while the wrapped MONAI UNet runs (its forward has no argument for it), and
    each StyleGroupNorm's (1 + s, b) when they were computed once for a whole DDIM loop (``bind``)."""

    value: torch.Tensor | None = None
    styles: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None


class StyleGroupNorm(nn.Module):
    """GroupNorm followed by AdaGN-style modulation from z_sem: h * (1 + s) + b, (s, b) = Linear(SiLU(z)).

    Replaces ``norm2`` of every MONAI ``DiffusionUNetResnetBlock``, i.e. the modulation sits where
    DiffAE puts it (after the second GroupNorm, before SiLU, dropout and the last conv).
    """

    def __init__(self, norm: nn.GroupNorm, z_dim: int, slot: _StyleSlot):
        super().__init__()
        self.norm = norm
        self.style = nn.Sequential(nn.SiLU(), nn.Linear(z_dim, 2 * norm.num_channels))
        self._slot = slot

    def modulation(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 + s, b) of z_sem (B, z_dim), each (B, C, 1, 1)."""
        scale, shift = self.style(z)[:, :, None, None].chunk(2, dim=1)
        return 1 + scale, shift

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        styles, z = self._slot.styles, self._slot.value
        if styles is None and z is None:
            raise RuntimeError("StyleGroupNorm called without z_sem; call ConditionalDenoiser.forward")
        gain, shift = styles[id(self)] if styles is not None else self.modulation(z)
        return torch.addcmul(shift, h, gain)  # h * (1 + s) + b in one pass (fused multiply-add: rounding differs ~1e-7)


class ConditionalDenoiser(nn.Module):
    """epsilon-prediction UNet: ``forward(x_t, t, z_sem, morph) -> eps`` (B, 1, H, W).

    Built on MONAI ``DiffusionModelUNet`` with two additions MONAI lacks:

    * z_sem as per-block scale and shift (AdaGN). MONAI's own routes are not enough: the class
      embedding is added to the time embedding, which enters each ResBlock only as an additive
      per-channel bias before a GroupNorm (it can shift but never scale features); cross-attention
      exists only at attention levels, and with a single context token softmax attention has one
      key, weight 1, so it too reduces to a constant additive bias. DiffAE's semantic code works
      multiplicatively in every ResBlock. The least invasive way with MONAI 1.6.1 is to swap each
      ResBlock's ``norm2`` for :class:`StyleGroupNorm` (MONAI's forward code is untouched) and to
      hand z_sem over through a shared slot for the duration of one forward call.
    * the morphology code as extra input channels: a 3x3 conv maps it to ``morph_channels``
      channels at its own resolution (1/8 by default), bilinear upsampling brings it to H x W, and it is
      concatenated to x_t. The input is MONAI's one channel-concatenation entry point (as
      ``DiffusionInferer(mode='concat')``), needs no change inside MONAI's blocks and lets every
      encoder level see the spatially aligned morphology; the cost is only the first conv.
      DMCVR concatenates once inside the encoder at the code's own resolution instead.
    """

    def __init__(
        self,
        z_dim: int = 128,
        morph_in_channels: int = 32,
        morph_channels: int = 8,
        channels: Sequence[int] = (16, 32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, False, True),
        num_res_blocks: int = 1,
        norm_num_groups: int = 8,
        num_head_channels: int = 32,
    ):
        super().__init__()
        self.morph_proj = nn.Conv2d(morph_in_channels, morph_channels, 3, padding=1)
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=1 + morph_channels, out_channels=1, num_res_blocks=num_res_blocks,
            channels=tuple(channels), attention_levels=tuple(attention_levels), norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
        )
        self._slot = _StyleSlot()
        for block in self.unet.modules():
            if isinstance(block, DiffusionUNetResnetBlock):
                block.norm2 = StyleGroupNorm(block.norm2, z_dim, self._slot)
        self.size_multiple = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z_sem: torch.Tensor, morph: torch.Tensor) -> torch.Tensor:
        return self._unet(x, t, self._morph_input(morph, x.shape[-2:]), z_sem, None)

    def bind(self, z_sem: torch.Tensor, morph: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``eps(x_t, t)`` = ``forward(x_t, t, z_sem, morph)`` for a DDIM loop, whose conditioning is fixed: the
        morphology channels and every block's AdaGN scale and shift are computed once, not at each step."""
        styles = {id(norm): norm.modulation(z_sem) for norm in self.modules() if isinstance(norm, StyleGroupNorm)}
        upsampled: dict[tuple[int, int], torch.Tensor] = {}

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            size = tuple(x.shape[-2:])
            if size not in upsampled:
                upsampled[size] = self._morph_input(morph, size)
            return self._unet(x, t, upsampled[size], z_sem, styles)

        return eps

    def _morph_input(self, morph: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(self.morph_proj(morph), size=size, mode="bilinear", align_corners=False)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, m: torch.Tensor, z_sem: torch.Tensor, styles) -> torch.Tensor:
        self._slot.value, self._slot.styles = z_sem, styles
        try:
            return self.unet(torch.cat([x, m], dim=1), t)
        finally:
            self._slot.value = self._slot.styles = None
