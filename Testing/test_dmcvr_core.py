"""DMCVR core: DDIM loops (vs MONAI's DDIM step), inversion round trip on a real ACDC slice,
slerp / lerp, interpolation weights from true positions, conditioning, losses, fill_stack."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler

from CardiacDiffusionLib.dmcvr import (
    Cancelled,
    DMCVRModel,
    Latents,
    ddim_decode,
    ddim_encode,
    ddim_timesteps,
    diffusion_loss,
    interpolation_plan,
    lerp,
    seg_loss,
    slerp,
)
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.labels import convert_labels
from helpers import DMCVR_TINY

ACDC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"
TINY = DMCVR_TINY
ALPHAS = DDIMScheduler(num_train_timesteps=1000).alphas_cumprod.float()


def _acdc_slices(index: list[int], size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices of ACDC patient001 ED, centre 216x216 crop, area-resized; labels in project convention."""
    h5py = pytest.importorskip("h5py")
    path = ACDC / "patient001_frame01.h5"
    if not path.exists():
        pytest.skip(f"shared ACDC data missing at {path}")
    with h5py.File(path) as f:
        img = torch.from_numpy(f["image"][index][:, None, 20:236, :].astype(np.float32))
        lab = torch.from_numpy(convert_labels(f["label"][index][:, 20:236, :], "acdc").astype(np.float32))
    img = F.interpolate(img, size=(size, size), mode="area").clamp(0, 1)
    lab = F.interpolate(lab[:, None], size=(size, size), mode="nearest")[:, 0].long()
    return img, lab


def _wake(model: DMCVRModel, gain: float = 0.1, time_input: bool = True) -> DMCVRModel:
    """Give MONAI's zero-initialised convs random weights and scale the output conv by ``gain``."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d) and not mod.weight.any():
            mod.reset_parameters()
        if not time_input and name.endswith("time_emb_proj"):
            torch.nn.init.zeros_(mod.weight)
            torch.nn.init.zeros_(mod.bias)
    with torch.no_grad():
        model.denoiser.unet.out[2].conv.weight.mul_(gain)
        model.denoiser.unet.out[2].conv.bias.mul_(gain)
    return model


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1 / ((a - b) ** 2).mean(dim=(1, 2, 3)))


# ---------------------------------------------------------------- DDIM timesteps and loops


@pytest.mark.parametrize("n", [1, 7, 20, 30, 50, 100, 333, 1000])
def test_timesteps(n):
    ts = ddim_timesteps(1000, n)
    assert len(ts) == n and ts[0] == 0 and ts[-1] < 1000
    assert torch.all(ts[1:] > ts[:-1])
    if 1000 % n == 0:  # DiffAE's range(0, T, T // N)
        assert ts.tolist() == list(range(0, 1000, 1000 // n))
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)


@pytest.mark.parametrize("n", [1, 7, 30, 50])
def test_loops_invert_exactly_when_eps_is_constant(n):
    """With a constant eps the two loops are exact inverses (and no IndexError on the top step)."""
    g = torch.Generator().manual_seed(1)
    x0, c = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1, torch.randn(3, 1, 8, 8, generator=g)
    seen = []
    x_T = ddim_encode(lambda x, t: c, x0, ALPHAS, n, progress=lambda k, m: seen.append((k, m)))
    assert seen == [(k, n) for k in range(1, n + 1)]
    assert (ddim_decode(lambda x, t: c, x_T, ALPHAS, n) - x0).abs().max() < 2e-4
    # x_T sits at t_{N-1} with its true alpha_bar (no extra step to alpha_bar = 0 as in DiffAE)
    a = ALPHAS[ddim_timesteps(1000, n)[-1]]
    assert torch.allclose(x_T, a.sqrt() * x0 + (1 - a).sqrt() * c, atol=1e-5)


def test_decode_matches_monai_ddim_step():
    """Where MONAI's stride and our list agree (N divides T) our decode equals DDIMScheduler.step."""
    n, g = 20, torch.Generator().manual_seed(2)
    x_T, w = torch.randn(2, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
    eps_fn = lambda x, t: torch.tanh(x * w) + t[:, None, None, None] / 1000  # noqa: E731
    ours = ddim_decode(eps_fn, x_T, ALPHAS, n)
    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    sched.set_timesteps(n)
    x = x_T
    for t in reversed(ddim_timesteps(1000, n).tolist()):
        x, _ = sched.step(eps_fn(x, torch.full((2,), t)), t, x)
    assert torch.allclose(ours, x, atol=1e-4)


def test_cancel_stops_the_loop():
    calls = []
    with pytest.raises(Cancelled):
        ddim_decode(lambda x, t: calls.append(1) or torch.zeros_like(x), torch.zeros(1, 1, 4, 4), ALPHAS, 10,
                    cancel=lambda: len(calls) >= 3)
    assert len(calls) == 3


# ---------------------------------------------------------------- inversion round trip


def test_round_trip_on_acdc_slice():
    """encode -> decode reproduces real slices; error falls with N; wrong z_sem does not reproduce.

    A randomly initialised net is not smooth in t (random weights on high-frequency sinusoidal
    time features alias at stride T/N), a trained one is; so the test net has no time input but
    random x-, z_sem- and morphology-dependence, and an output conv scaled to 0.1 (eps std ~0.03,
    as right after MONAI's zero-initialised output starts training). Measured: N=10 23-24 dB,
    N=50 33-38 dB over seeds 0-3 (error ~1/N; ~42 dB at N=100 in a variant without attention),
    decoding with the other slice's z_sem 14-16 dB. Threshold 30 dB at N=50 keeps >= 3 dB margin.
    """
    torch.manual_seed(0)
    model = _wake(DMCVRModel(TINY), gain=0.1, time_input=False).eval()
    x, _ = _acdc_slices([3, 5])
    lat50 = model.encode(x, steps=50)
    psnr50 = _psnr(model.decode(lat50, steps=50), x)
    psnr10 = _psnr(model.decode(model.encode(x, steps=10), steps=10), x)
    swapped = _psnr(model.decode(Latents(lat50.z_sem.flip(0), lat50.morph, lat50.x_T), steps=50), x)
    print(f"round-trip PSNR N=10 {psnr10.tolist()}, N=50 {psnr50.tolist()}, swapped z_sem {swapped.tolist()}")
    assert torch.all(psnr50 > 30)
    assert torch.all(psnr50 > psnr10 + 6)
    assert torch.all(swapped < psnr50 - 10)


# ---------------------------------------------------------------- lerp / slerp / weights


def test_slerp_properties():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 2, 4, 4, generator=g), torch.randn(5, 2, 4, 4, generator=g)
    a, b = a / a.flatten(1).norm(dim=1)[:, None, None, None], b / b.flatten(1).norm(dim=1)[:, None, None, None]
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    theta = torch.acos((a.flatten(1) * b.flatten(1)).sum(1))
    w = torch.tensor([0.0, 0.1, 0.5, 0.8, 1.0])
    c = slerp(a, b, w)  # batched, one weight per sample
    assert torch.allclose(c.flatten(1).norm(dim=1), torch.ones(5), atol=1e-5)  # stays on the sphere
    angle_to_a = torch.acos((c.flatten(1) * a.flatten(1)).sum(1).clamp(-1, 1))
    assert torch.allclose(angle_to_a, w * theta, atol=1e-3)  # angle moves linearly
    # equal and antiparallel inputs and tiny angles: finite, equal to lerp
    for other in (a, -a, a + 1e-9):
        out = slerp(a, other, 0.3)
        assert torch.isfinite(out).all() and torch.allclose(out, lerp(a, other, 0.3), atol=1e-5)
    assert torch.isfinite(slerp(torch.zeros_like(a), b, 0.5)).all()


def test_lerp_batched():
    a, b = torch.zeros(3, 2), torch.ones(3, 2)
    assert torch.allclose(lerp(a, b, torch.tensor([0.0, 0.25, 1.0]))[:, 0], torch.tensor([0.0, 0.25, 1.0]))


def test_interpolation_weights_from_uneven_positions():
    pos = [20.0, 0.0, 8.0]  # unsorted, gaps 8 and 12 mm
    lo, hi, w = interpolation_plan(pos, [0.0, 2.0, 8.0, 11.0, 20.0, 14.0])
    assert lo.tolist() == [1, 1, 2, 2, 0, 2] and hi.tolist() == [1, 2, 2, 0, 0, 0]
    assert np.allclose(w, [0.0, 0.25, 0.0, 0.25, 0.0, 0.5])
    with pytest.raises(InputError, match="extrapolate"):
        interpolation_plan(pos, [-1.0])
    with pytest.raises(InputError, match="none given"):
        interpolation_plan(pos, [])
    with pytest.raises(InputError, match="share one position"):
        interpolation_plan([0.0, 5.0, 5.0], [1.0])


# ---------------------------------------------------------------- conditioning


def test_conditioning_changes_the_prediction():
    torch.manual_seed(4)
    model = DMCVRModel(TINY)
    x, _ = _acdc_slices([5])
    x = x.repeat(2, 1, 1, 1) * 2 - 1
    t = torch.full((2,), 300)
    z = torch.randn(2, 16)
    m = model.morph_net.encode(x[:1]).repeat(2, 1, 1, 1)
    with torch.no_grad():
        assert model.eps(x, t, z, m).abs().max() == 0  # MONAI zero-initialises the output conv
        _wake(model, gain=1.0)
        e = model.eps(x, t, z, m)  # same x and t, different z_sem
        assert (e[0] - e[1]).abs().mean() > 0.05 * e.abs().mean()
        m2 = m.clone()
        m2[1] = torch.randn_like(m2[1])  # same x, t and z_sem, different morphology
        e2 = model.eps(x, t, z[:1].repeat(2, 1), m2)
        assert (e2[0] - e2[1]).abs().mean() > 0.05 * e2.abs().mean()


# ---------------------------------------------------------------- losses


def test_diffusion_loss_falls_and_trains_only_encoder_and_denoiser():
    torch.manual_seed(5)
    model = DMCVRModel(TINY)
    x, _ = _acdc_slices([2, 4, 6, 8])
    morph_before = [p.detach().clone() for p in model.morphology_parameters()]
    enc_before = [p.detach().clone() for p in model.semantic_encoder.parameters()]
    opt = torch.optim.Adam(model.diffusion_parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = diffusion_loss(model, x, torch.Generator().manual_seed(0))  # same t and noise each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"diffusion loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in model.morphology_parameters())
    assert all(torch.equal(a, b) for a, b in zip(morph_before, model.morphology_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, model.semantic_encoder.parameters()))


def test_seg_loss_falls():
    torch.manual_seed(6)
    model = DMCVRModel(TINY)
    x, lab = _acdc_slices([2, 4, 6, 8])
    opt = torch.optim.Adam(model.morphology_parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = seg_loss(model, x, lab)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"seg loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.7 * losses[0]
    assert seg_loss(model.morph_net, x, lab[:, None]).item() == pytest.approx(losses[-1], rel=0.2)


# ---------------------------------------------------------------- model: fill_stack, config, checks


def test_fill_stack_shapes_and_acquired_slices():
    torch.manual_seed(7)
    model = _wake(DMCVRModel(TINY))
    x, _ = _acdc_slices([2, 4, 6])
    pos = [0.0, 10.0, 25.0]  # uneven gaps
    targets = [0.0, 5.0, 10.0, 12.5, 20.0, 25.0]
    seen = []
    out, labels = model.fill_stack(x, pos, targets, steps=4, progress=lambda k, n: seen.append((k, n)))
    assert out.shape == (6, 1, 64, 64) and labels.shape == (6, 64, 64) and labels.dtype == torch.long
    assert torch.equal(out[[0, 2, 5]], x)  # acquired slices reused
    assert out.min() >= 0 and out.max() <= 1 and set(labels.unique().tolist()) <= {0, 1, 2, 3}
    assert seen[-1] == (8, 8) and len(seen) == 8
    # the decoded batch equals decoding the interpolated latents directly
    lat = model.encode(x, steps=4)
    mid = model.interpolate(Latents(*(t[[0, 1, 1]] for t in lat)), Latents(*(t[[1, 2, 2]] for t in lat)),
                            torch.tensor([0.5, 1 / 6, 2 / 3]))
    assert torch.allclose(out[[1, 3, 4]], model.decode(mid, steps=4), atol=1e-5)
    again, _ = model.fill_stack(x, pos, targets, steps=4, redecode_acquired=True)
    assert not torch.equal(again[0], x[0]) and torch.allclose(again[1], out[1], atol=1e-5)


def test_config_round_trip_and_input_checks():
    model = _wake(DMCVRModel(TINY))
    clone = DMCVRModel(json.loads(json.dumps(model.config)))
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        z, m = model.semantic(x), model.morph_net.encode(x)
        t = torch.tensor([10, 900])
        assert torch.equal(model.eps(x, t, z, m), clone.eps(x, t, clone.semantic(x), clone.morph_net.encode(x)))
    with pytest.raises(InputError, match="unknown keys"):
        DMCVRModel({"zdim": 3})
    with pytest.raises(InputError, match="outside"):
        model.encode(x * 255)
    with pytest.raises(InputError, match="multiple of 16"):
        model.segment(torch.rand(1, 1, 40, 40))
    with pytest.raises(InputError, match="shape"):
        model.segment(torch.rand(1, 40, 48))
    assert math.isclose(float(model.alphas_cumprod[0]), 1 - 1e-4, rel_tol=1e-6)
