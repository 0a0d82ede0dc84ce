"""LDDMM geodesic shooting with EPDiff in a band-limited Fourier space (FLASH, Zhang & Fletcher 2015/2019).

Metric: L = (gamma I - alpha Laplacian)^c, K = L^{-1}, on a periodic grid with unit voxel spacing. We use the
symbol of the 7-point discrete Laplacian, w_k = sum_d (2 - 2 cos(2 pi k_d / N_d)), not the continuous |2 pi k/N|^2:
L is then exactly (gamma - alpha * finite-difference Laplacian)^c, the operator of lagomorph / FLASH / Geo-SIC, so
alpha and gamma keep the meaning they have in SADIR (alpha=3, gamma=1); both symbols agree at the low frequencies
a band-limited velocity keeps. Derivatives are central differences, symbol i sin(2 pi k_d / N_d), which keeps the
band-limited and the spatial integrator (spatial_epdiff.py) the same discrete equation.

Velocity: Fourier coefficients v_hat (B, 3, T, T, T), complex, centred (index j <-> frequency j - (T-1)/2), T odd,
normalised so that v(x) = sum_k v_hat_k exp(2 pi i k.x / N) (torch.fft norm="forward"): coefficients do not
depend on the grid size. Channel i is the displacement along tensor axis i + 2, in voxels per unit time.

EPDiff (Eulerian, for v): dv/dt = -K[(Dv)^T m + div(m (x) v)], m = L v, 10 forward-Euler steps on t in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .warp import integrate_flow, warp

_SPATIAL = (-3, -2, -1)


def laplacian_eigenvalues(shape: tuple[int, int, int], freqs: list[torch.Tensor]) -> torch.Tensor:
    """w_k = sum_d (2 - 2 cos(2 pi k_d / N_d)) for integer frequencies ``freqs[d]`` (broadcast to a 3D grid)."""
    w = 0
    for d, (k, n) in enumerate(zip(freqs, shape)):
        view = [1, 1, 1]
        view[d] = -1
        w = w + (2 - 2 * torch.cos(2 * math.pi * k / n)).reshape(view)
    return w


def central_difference_symbols(shape: tuple[int, int, int], freqs: list[torch.Tensor]) -> torch.Tensor:
    """(3, ...) real part s_d of the central-difference symbol i s_d = i sin(2 pi k_d / N_d)."""
    grids = torch.meshgrid(*freqs, indexing="ij")
    return torch.stack([torch.sin(2 * math.pi * k / n) for k, n in zip(grids, shape)])


def check_metric(shape, alpha: float, gamma: float, c: float, steps: int) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise InputError(f"shape: expected 3 grid sizes >= 2, got {shape}")
    if alpha < 0 or gamma <= 0 or c <= 0:
        raise InputError(f"metric: need alpha >= 0, gamma > 0, c > 0, got alpha={alpha}, gamma={gamma}, c={c}")
    if steps < 1:
        raise InputError(f"steps: need at least 1 Euler step, got {steps}")
    return shape


class EPDiffShooting(nn.Module):
    """Band-limited geodesic shooting: ``forward(v0) -> (displacement of phi_1^{-1}, [v_hat_0 .. v_hat_{N-1}])``.

    ``v0`` is either band-limited coefficients (complex, (B, 3, T, T, T)) or a real velocity field
    (B, 3, D, H, W) that is low-pass projected first. ``truncation`` is the number of modes kept per axis; an
    even value is reduced by one (as in FLASH) so the band is symmetric about 0 and the velocity stays real.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        alpha: float = 3.0,
        gamma: float = 1.0,
        c: float = 3,
        steps: int = 10,
        truncation: int = 16,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.shape = check_metric(shape, alpha, gamma, c, steps)
        t = truncation - 1 if truncation % 2 == 0 else truncation
        if t < 1 or t > min(self.shape):
            raise InputError(f"truncation: {truncation} modes do not fit grid {self.shape}; use 1..{min(self.shape)}")
        self.alpha, self.gamma, self.c, self.steps, self.truncation = alpha, gamma, c, steps, t
        self.half = (t - 1) // 2
        # Products of two fields with |k| <= h have |k| <= 2h; on a grid of P >= 3h + 1 points their aliases
        # (k -/+ P) stay outside |k| <= h, so the truncated product is exact (the "3/2 rule").
        self.product_size = 3 * self.half + 1
        k = torch.arange(-self.half, self.half + 1, dtype=torch.float64)
        w = laplacian_eigenvalues(self.shape, [k, k, k])
        self.register_buffer("l_symbol", ((gamma + alpha * w) ** c).to(dtype))
        self.register_buffer("d_symbol", central_difference_symbols(self.shape, [k, k, k]).to(dtype))

    # --- conversions between the band-limited space and grids ---------------------------------------
    def to_grid(self, v_hat: torch.Tensor, size: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Real field on a grid (default: the full grid) from centred coefficients (..., T, T, T)."""
        size = tuple(size or self.shape)
        h, t = self.half, self.truncation
        # irfftn wants the half spectrum k_w >= 0 (the rest follows from c_{-k} = conj(c_k)); zero-pad it to
        # the grid's spectrum, centred on the first two axes, then move frequency 0 to index 0 there.
        pads = [0, size[2] // 2 - h]  # F.pad lists the last axis first
        for n in (size[1], size[0]):
            left = n // 2 - h
            pads += [left, n - t - left]
        spec = torch.fft.ifftshift(F.pad(v_hat[..., h:], pads), dim=(-3, -2))
        return torch.fft.irfftn(spec, s=size, dim=_SPATIAL, norm="forward")

    def from_grid(self, field: torch.Tensor) -> torch.Tensor:
        """Centred coefficients (..., T, T, T) of the lowest modes of a real field on any grid."""
        spec = torch.fft.fftshift(torch.fft.fftn(field, dim=_SPATIAL, norm="forward"), dim=_SPATIAL)
        h = self.half
        c0, c1, c2 = (n // 2 for n in field.shape[-3:])
        return spec[..., c0 - h : c0 + h + 1, c1 - h : c1 + h + 1, c2 - h : c2 + h + 1]

    def to_bandlimited(self, v: torch.Tensor) -> torch.Tensor:
        """Band-limited coefficients of a real velocity field (B, 3, D, H, W) on the full grid."""
        if v.ndim != 5 or v.shape[1] != 3 or tuple(v.shape[2:]) != self.shape:
            grid = ", ".join(map(str, self.shape))
            raise InputError(f"velocity: expected shape (B, 3, {grid}), got {tuple(v.shape)}; resample it to the grid")
        return self.from_grid(v)

    def to_spatial(self, v_hat: torch.Tensor) -> torch.Tensor:
        """Real velocity field (B, 3, D, H, W) on the full grid (exact band-limited upsampling)."""
        return self.to_grid(v_hat)

    def coefficients(self, v0: torch.Tensor) -> torch.Tensor:
        """Accept coefficients or a spatial field; return Hermitian-symmetric coefficients (a real velocity)."""
        if not v0.is_complex():
            return self.to_bandlimited(v0)
        t = self.truncation
        if v0.ndim != 5 or tuple(v0.shape[1:]) != (3, t, t, t):
            raise InputError(f"v0 coefficients: expected shape (B, 3, {t}, {t}, {t}), got {tuple(v0.shape)}")
        return 0.5 * (v0 + torch.conj(torch.flip(v0, dims=_SPATIAL)))  # c_{-k} = conj(c_k)

    # --- metric ------------------------------------------------------------------------------------
    def apply_l(self, v_hat: torch.Tensor) -> torch.Tensor:
        return self.l_symbol.to(v_hat.real.dtype) * v_hat

    def apply_k(self, m_hat: torch.Tensor) -> torch.Tensor:
        return m_hat / self.l_symbol.to(m_hat.real.dtype)

    def energy(self, v_hat: torch.Tensor) -> torch.Tensor:
        """(B,) <Lv, v> = sum over voxels of (Lv).v (Parseval: N_voxels * sum_k L_k |v_hat_k|^2)."""
        n = math.prod(self.shape)
        return n * (self.l_symbol.to(v_hat.real.dtype) * v_hat.abs() ** 2).sum(dim=(1, 2, 3, 4))

    # --- EPDiff ------------------------------------------------------------------------------------
    def epdiff_rhs(self, v_hat: torch.Tensor) -> torch.Tensor:
        """-K[(Dv)^T m + div(m (x) v)] for coefficients (B, 3, T, T, T).

        Standard FLASH trick: derivatives and L are diagonal in Fourier space; the two products are formed
        pointwise on a small zero-padded grid (P = 3h + 1 points per axis, alias-free for the kept modes),
        transformed back and truncated. This is the convolution of the truncated spectra without an O(T^6) sum.
        """
        size = (self.product_size,) * 3
        ds = 1j * self.d_symbol.to(v_hat.real.dtype)  # (3, T, T, T), derivative along axis i
        m_hat = self.apply_l(v_hat)
        v = self.to_grid(v_hat, size)  # (B, 3, P, P, P)
        m = self.to_grid(m_hat, size)
        dv = self.to_grid(ds[None, None] * v_hat[:, :, None], size)  # [b, j, i] = d v_j / d x_i
        advect = torch.einsum("bjixyz,bjxyz->bixyz", dv, m)  # ((Dv)^T m)_i = sum_j d_i v_j m_j
        mv = self.from_grid(m[:, :, None] * v[:, None])  # [b, i, j] = (m_i v_j)^
        div = (ds[None, None] * mv).sum(dim=2)  # sum_j d_j (m_i v_j)
        return -self.apply_k(self.from_grid(advect) + div)

    def shoot(self, v0: torch.Tensor) -> list[torch.Tensor]:
        """Band-limited velocities [v_hat(0), v_hat(dt), ..., v_hat(1)] by forward Euler."""
        v_hat = self.coefficients(v0)
        dt = 1.0 / self.steps
        velocities = [v_hat]
        for _ in range(self.steps):
            v_hat = v_hat + dt * self.epdiff_rhs(v_hat)
            velocities.append(v_hat)
        return velocities

    def flow(self, velocities: list[torch.Tensor], inverse: bool = True) -> torch.Tensor:
        """Full-resolution displacement of phi_1^{-1} (or phi_1) from velocities at t = 0, dt, .., 1 - dt.

        The velocities are upsampled exactly (zero-padded spectrum); the flow itself is integrated at full
        resolution because a displacement is not band-limited even when the velocity is.
        """
        return integrate_flow([self.to_spatial(v) for v in velocities], inverse=inverse)

    def forward(self, v0: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        velocities = self.shoot(v0)[:-1]
        return self.flow(velocities), velocities

    def shoot_and_warp(self, image: torch.Tensor, v0: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """image o phi_1^{-1}: the image (B or 1, C, D, H, W) deformed along the geodesic from v0."""
        disp, _ = self(v0)
        return warp(image, disp, mode=mode)
