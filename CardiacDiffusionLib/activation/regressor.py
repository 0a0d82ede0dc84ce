"""A small learned TOS regressor: a dilated 1D CNN over a sector's strain curve and its two neighbours.

Why a soft-argmax head: onset is a time, so the net scores every frame of its time grid and the TOS
is the softmax-weighted mean frame time (sub-frame, shift-equivariant in time), not a global pool.
Curves of any frame rate are resampled onto the model's grid (``frame_ms`` x ``frames``, 17 ms x 40
as cine DENSE) and the answer is floored at the input's first frame, like the detector's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..models.store import register_architecture
from .tos import check_strain, frame_times

ARCHITECTURE = "tos_net"
MODEL_NAME = "tos-regressor"
STRAIN_SCALE = 10.0  # Ecc ~ -0.2..0.05 -> ~ -2..0.5


class TOSNet(nn.Module):
    """(B, 3, frames) strain of sectors s-1, s, s+1 -> (B,) TOS of sector s in ms."""

    def __init__(self, channels: int = 32, dilations=(1, 2, 4, 8, 1), kernel: int = 5, frames: int = 40,
                 frame_ms: float = 17.0):  # fmt: skip
        super().__init__()
        self.frames, self.frame_ms = int(frames), float(frame_ms)
        layers, c_in = [], 3
        for d in dilations:
            layers += [nn.Conv1d(c_in, channels, kernel, padding=d * (kernel - 1) // 2, dilation=d), nn.GELU()]
            c_in = channels
        layers.append(nn.Conv1d(channels, 1, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("times", torch.tensor(frame_times(self.frames, self.frame_ms), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.net(x * STRAIN_SCALE)[:, 0], dim=-1)
        return weights @ self.times


def build_tos_net(config: dict) -> TOSNet:
    """Model-store builder of the ``tos_net`` architecture."""
    config = dict(config)
    if "dilations" in config:
        config["dilations"] = tuple(config["dilations"])
    return TOSNet(**config)


register_architecture(ARCHITECTURE, build_tos_net)


def resample(strain: np.ndarray, frame_ms: float, frames: int, model_frame_ms: float) -> np.ndarray:
    """Curves ``(..., n)`` at ``frame_ms`` onto the model grid (linear; edge values held beyond the ends)."""
    t_in = frame_times(strain.shape[-1], frame_ms)
    t_out = frame_times(frames, model_frame_ms)
    if len(t_in) == frames and np.isclose(frame_ms, model_frame_ms):
        return np.asarray(strain, np.float32)
    flat = strain.reshape(-1, strain.shape[-1])
    out = np.stack([np.interp(t_out, t_in, c) for c in flat]).astype(np.float32)
    return out.reshape(*strain.shape[:-1], frames)


def sector_inputs(strain: np.ndarray) -> np.ndarray:
    """``(n_slices, 18, T)`` -> ``(n_slices * 18, 3, T)``: each sector with its circular neighbours."""
    stacked = np.stack([np.roll(strain, 1, axis=1), strain, np.roll(strain, -1, axis=1)], axis=2)
    return stacked.reshape(-1, 3, strain.shape[-1])


def load_default(device: str = "cpu") -> TOSNet:
    """The shipped regressor (sha256-checked through the model store)."""
    from ..models.store import load_model

    return load_model(MODEL_NAME, device=device, builders={ARCHITECTURE: build_tos_net}).module


def predict_tos(strain, frame_ms: float = 17.0, model: TOSNet | str | None = None) -> np.ndarray:
    """TOS (ms) ``(n_slices, 18)`` from strain matrices with the regressor (default: the shipped one)."""
    s = check_strain(strain)
    if model is None:
        model = load_default()
    elif isinstance(model, str):
        from ..models.store import load_model

        model = load_model(model, builders={ARCHITECTURE: build_tos_net}).module
    if not isinstance(model, TOSNet):
        raise InputError(f"TOS regressor: expected a {ARCHITECTURE} model, got {type(model).__name__}")
    x = sector_inputs(resample(s, frame_ms, model.frames, model.frame_ms))
    with torch.no_grad():
        tos = model.eval()(torch.from_numpy(x).to(model.times.device)).cpu().numpy()
    return np.maximum(tos.reshape(s.shape[:2]).astype(float), frame_ms)
