"""Deterministic DDIM (eta = 0) encoding (inversion) and decoding on an explicit timestep list.

Written here rather than taken from MONAI: ``DDIMScheduler.reversed_step`` indexes past the end of
``alphas_cumprod`` on the top step, and since MONAI 1.6 ``set_timesteps`` (linspace) and
``step``/``reversed_step`` (stride T//N) disagree on the next timestep. MONAI still provides the
noise schedule (``alphas_cumprod``).

Timesteps t_i = floor(i * T / N), i = 0..N-1: DiffAE's ``range(0, T, T // N)`` whenever N divides
T, strictly increasing and inside [0, T) for every 1 <= N <= T.

The two loops mirror each other exactly (N network evaluations each):

    decode: x_{t_{N-1}} -> x_{t_{N-2}} -> ... -> x_{t_0} -> x_0   (the last step has alpha_bar = 1)
    encode: x_0 -> x_{t_0} -> ... -> x_{t_{N-1}}

The inversion stops at the last scheduled timestep t_{N-1} with its true alpha_bar, and decoding
starts there. DiffAE instead takes one more step to alpha_bar = 0, which makes x_T equal to the
predicted epsilon; with our choice x_T = sqrt(a) x0_hat + sqrt(1 - a) eps_hat keeps the meaning of a
noisy sample at t_{N-1} (close to Gaussian at the top of the schedule), which is what slerp
between two codes assumes, and decoding uses the same alpha_bar the encoder used.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

#: eps_fn(x (B, C, H, W), t (B,) long) -> predicted noise, conditioning already bound.
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


class Cancelled(RuntimeError):
    """The cancel check returned True between two DDIM steps."""


def ddim_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """Increasing timesteps t_i = floor(i * T / N), i = 0..N-1 (long tensor)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{num_train_timesteps}, got {steps}")
    return torch.div(torch.arange(steps) * num_train_timesteps, steps, rounding_mode="floor")


def _step(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float, clip_x0: bool) -> torch.Tensor:
    """Move x from alpha_bar a_from to a_to along the deterministic DDIM path given eps."""
    x0 = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    return math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * eps


def _loop(
    eps_fn: EpsFn,
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int,
    encode: bool,
    progress: Progress | None,
    cancel: CancelCheck | None,
    clip_x0: bool = False,
) -> torch.Tensor:
    ts = ddim_timesteps(len(alphas_cumprod), steps).tolist()
    abar = alphas_cumprod.tolist()  # Python floats (exact); .double() on the device fails on MPS (no float64)
    one = 1.0
    # (eval timestep, alpha_bar from, alpha_bar to) for every step, in execution order
    if encode:
        plan = [(ts[0], one, abar[ts[0]])] + [(ts[i], abar[ts[i]], abar[ts[i + 1]]) for i in range(steps - 1)]
    else:
        plan = [(ts[i], abar[ts[i]], abar[ts[i - 1]] if i > 0 else one) for i in range(steps - 1, -1, -1)]
    with torch.inference_mode():
        for k, (t, a_from, a_to) in enumerate(plan):
            if cancel is not None and cancel():
                raise Cancelled("DDIM loop cancelled")
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            eps = eps_fn(x, tt)
            x = _step(x, eps, a_from, a_to, clip_x0)
            if progress is not None:
                progress(k + 1, steps)
    return x


def ddim_encode(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """DDIM inversion of clean x0 (B, C, H, W) in [-1, 1] to x at t_{N-1} (the stochastic code x_T).

    The first step (alpha_bar 1 -> t_0) evaluates the network at t_0 on x0, mirroring the last
    decoding step. ``progress(done, steps)`` is called after each step; ``cancel()`` returning
    True raises :class:`Cancelled`.
    """
    return _loop(eps_fn, x0, alphas_cumprod, steps, True, progress, cancel)


def ddim_decode(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM sampling from x at t_{N-1} down to x0 (B, C, H, W), range [-1, 1].

    ``clip_x0`` clamps the predicted x0 to [-1, 1] at every step (as DiffAE's ``clip_denoised``);
    it is off by default because the encoder does not clamp, and clamping only one side breaks
    the mirror symmetry that makes encode-then-decode reproduce the slice.
    """
    return _loop(eps_fn, x_T, alphas_cumprod, steps, False, progress, cancel, clip_x0)
