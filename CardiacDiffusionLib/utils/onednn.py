"""Batch-1 CPU inference of convolutions through oneDNN (mkldnn) instead of PyTorch's native loop.

PyTorch chooses between oneDNN and its native im2col convolution with a size heuristic
(``ConvParams::use_mkldnn`` in ATen's Convolution.cpp): a float32 CPU input with batch 1, a 3x3(x3)
kernel and N*C*D*H (N*C*H*W in 2D) of at most 20480 goes to the native ``slow_conv3d``/``slow_conv2d``.
That rule was tuned on 2D images; every 3D UNet we sample at batch 1 falls under it (the LDM's
16^3 latent, SADIR's 32^3 grid, the deep levels of the VAE decoder), and there oneDNN is several times
faster: the LDM UNet call took 0.075 s native vs 0.021 s oneDNN on one thread (profile: 92 % of the
time in ``slow_conv3d_forward``). The results agree to float rounding (~1e-6).

:func:`use_onednn_convs` swaps the class of every plain ``nn.Conv2d``/``nn.Conv3d`` of a module for a
subclass that calls ``torch.mkldnn_convolution`` directly when no gradient is recorded and the input is
a float32 CPU tensor; anything else (training, CUDA, half precision, padding modes other than zeros,
``padding="same"``) takes the parent's ``forward`` unchanged. Weights, state_dict keys and
``isinstance`` checks stay as they were.
"""

from __future__ import annotations

import torch
from torch import nn


def _onednn_applies(conv: nn.modules.conv._ConvNd, x: torch.Tensor) -> bool:
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


class _OneDNNForward:
    """Forward of a Conv2d/Conv3d subclass: oneDNN when :func:`_onednn_applies`, else the parent's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _onednn_applies(self, x):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups)
        return super().forward(x)


class OneDNNConv2d(_OneDNNForward, nn.Conv2d):
    """``nn.Conv2d`` whose gradient-free float32 CPU calls always use oneDNN."""


class OneDNNConv3d(_OneDNNForward, nn.Conv3d):
    """``nn.Conv3d`` whose gradient-free float32 CPU calls always use oneDNN."""


_SWAPS = {nn.Conv2d: OneDNNConv2d, nn.Conv3d: OneDNNConv3d}


def use_onednn_convs(module: nn.Module) -> nn.Module:
    """Swap (in place) the plain Conv2d/Conv3d layers of ``module`` for the oneDNN ones; returns ``module``."""
    for layer in module.modules():
        swap = _SWAPS.get(type(layer))
        if swap is not None:
            layer.__class__ = swap
    return module


def use_native_convs(module: nn.Module) -> nn.Module:
    """Undo :func:`use_onednn_convs` (in place; benchmarks time both); returns ``module``."""
    for layer in module.modules():
        for plain, swap in _SWAPS.items():
            if type(layer) is swap:
                layer.__class__ = plain
    return module
