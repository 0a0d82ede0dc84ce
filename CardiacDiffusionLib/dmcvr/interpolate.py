"""Latent interpolation between acquired slices: weights from true positions, lerp and slerp."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError

#: Positions closer than this (mm) count as the same slice position.
POSITION_TOL_MM = 1e-3


def _weights(w: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """w as a (B, 1, 1, ...) tensor broadcastable against ``like`` (B, ...)."""
    w = torch.as_tensor(w, dtype=like.dtype, device=like.device)
    if w.ndim == 0:
        w = w.expand(like.shape[0])
    return w.reshape(-1, *([1] * (like.ndim - 1)))


def lerp(a: torch.Tensor, b: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """(1 - w) a + w b per sample; w a scalar or (B,)."""
    w = _weights(w, a)
    return (1 - w) * a + w * b


def slerp(a: torch.Tensor, b: torch.Tensor, w: float | torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation per sample of the flattened tensors a, b (B, ...); w scalar or (B,).

    sin((1-w) theta)/sin(theta) a + sin(w theta)/sin(theta) b with theta the angle between a and b,
    taken as 2 atan2(|a^ - b^|, |a^ + b^|) (accurate near 0 and near pi, unlike acos of the
    cosine). Where sin(theta) < eps (equal or antiparallel directions, or a zero vector) it falls
    back to lerp, so the result is always finite.
    """
    af, bf = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    an = af / af.norm(dim=1, keepdim=True).clamp_min(1e-30)
    bn = bf / bf.norm(dim=1, keepdim=True).clamp_min(1e-30)
    theta = 2 * torch.atan2((an - bn).norm(dim=1), (an + bn).norm(dim=1))
    w = _weights(w, af)[:, 0]
    sin = torch.sin(theta)
    ok = sin > eps
    safe = torch.where(ok, sin, torch.ones_like(sin))
    wa = torch.where(ok, torch.sin((1 - w) * theta) / safe, 1 - w)
    wb = torch.where(ok, torch.sin(w * theta) / safe, w)
    return (wa[:, None] * af + wb[:, None] * bf).reshape(a.shape)


def interpolation_plan(positions_mm, target_positions_mm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each target: indices (lo, hi) of the acquired slices around it and weight w in [0, 1].

    w = (p - p_lo) / (p_hi - p_lo) from the true positions, so uneven gaps work. A target at an
    acquired position (within :data:`POSITION_TOL_MM`) gets lo = hi = that slice and w = 0.
    Indices refer to the given (not necessarily sorted) ``positions_mm``.
    """
    p = np.asarray(positions_mm, dtype=float).ravel()
    q = np.asarray(target_positions_mm, dtype=float).ravel()
    if p.size < 1 or not np.all(np.isfinite(p)) or not np.all(np.isfinite(q)):
        raise InputError(
            "slice positions: need at least one acquired position and finite values; check the stack geometry"
        )
    if q.size < 1:
        raise InputError("target positions: none given; give at least one position (mm) to reconstruct")
    order = np.argsort(p)
    ps = p[order]
    if np.any(np.diff(ps) < POSITION_TOL_MM):
        raise InputError("slice positions: two acquired slices share one position; remove the duplicate slice")
    if (q.min() < ps[0] - POSITION_TOL_MM or q.max() > ps[-1] + POSITION_TOL_MM):
        raise InputError(
            f"target positions: {q.min():.2f}..{q.max():.2f} mm reach outside the acquired slices "
            f"{ps[0]:.2f}..{ps[-1]:.2f} mm; DMCVR interpolates between slices and cannot extrapolate"
        )
    hi = np.clip(np.searchsorted(ps, q, side="left"), 0, ps.size - 1)
    lo = np.clip(hi - 1, 0, ps.size - 1)
    # snap targets that sit on an acquired slice (either neighbour) to it
    on_hi = np.abs(ps[hi] - q) <= POSITION_TOL_MM
    on_lo = np.abs(ps[lo] - q) <= POSITION_TOL_MM
    lo = np.where(on_hi, hi, lo)
    hi = np.where(on_lo & ~on_hi, lo, hi)
    gap = ps[hi] - ps[lo]
    w = np.where(gap > 0, (q - ps[lo]) / np.where(gap > 0, gap, 1.0), 0.0)
    return order[lo], order[hi], np.clip(w, 0.0, 1.0)
