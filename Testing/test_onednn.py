"""utils/onednn.py: batch-1 CPU convolutions through oneDNN give the native results, training is untouched."""

from __future__ import annotations

import copy

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from CardiacDiffusionLib.utils.onednn import OneDNNConv2d, OneDNNConv3d, use_onednn_convs


def _unet() -> nn.Module:
    torch.manual_seed(0)
    return DiffusionModelUNet(spatial_dims=3, in_channels=3, out_channels=3, channels=(8, 16), attention_levels=(False, True),
                              num_head_channels=(0, 8), num_res_blocks=1, norm_num_groups=4).eval()  # fmt: skip


def test_swapped_unet_matches_native_and_uses_onednn():
    native = _unet()
    fast = use_onednn_convs(copy.deepcopy(native))
    kinds = {type(m) for m in fast.modules()}
    assert OneDNNConv3d in kinds and nn.Conv3d not in kinds
    assert fast.state_dict().keys() == native.state_dict().keys()
    x, t = torch.randn(1, 3, 8, 8, 8), torch.tensor([10])
    with torch.inference_mode():
        expected = native(x, t)
        with torch.profiler.profile() as prof:
            got = fast(x, t)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::mkldnn_convolution" in ops and "aten::slow_conv3d_forward" not in ops
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_gradients_and_other_paths_take_the_parent_forward():
    conv = nn.Conv2d(2, 4, 3, padding=1)
    fast = use_onednn_convs(copy.deepcopy(conv))
    assert type(fast) is OneDNNConv2d
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    fast(x).sum().backward()  # training: the parent's differentiable forward
    conv(x.detach().requires_grad_()).sum().backward()
    assert torch.allclose(fast.weight.grad, conv.weight.grad, atol=1e-5)
    same = use_onednn_convs(nn.Conv2d(2, 4, 3, padding="same"))
    with torch.no_grad():  # padding="same" and float64 fall back, with the native answer
        assert same(torch.randn(1, 2, 5, 5)).shape == (1, 4, 5, 5)
        d = use_onednn_convs(copy.deepcopy(conv)).double()
        assert torch.allclose(d(x.double()), conv.double()(x.double()), atol=1e-10)


def test_loaded_models_get_onednn_convs():
    from CardiacDiffusionLib.ldm.generate import load_ldm

    model = load_ldm()
    assert any(type(m) is OneDNNConv3d for m in model.modules())
    assert not any(type(m) is nn.Conv3d for m in model.modules())
