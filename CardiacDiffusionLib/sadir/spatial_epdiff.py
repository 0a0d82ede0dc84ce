"""The same EPDiff shooting on the full spatial grid: the benchmark baseline and a cross-check of epdiff.py.

Same metric and conventions as epdiff.py (discrete-Laplacian symbol, central differences, periodic grid,
voxel units), but every field lives at full resolution: products pointwise, derivatives by finite differences,
K by an rFFT over the whole grid. Two forms:
- "eulerian": dv/dt = -K[(Dv)^T m + div(m (x) v)], m = L v (the equation epdiff.py truncates);
- "lagrangian": m_t = det(D phi_t^{-1}) (D phi_t^{-1})^T m_0 o phi_t^{-1}, v_t = K m_t (SADIR / lagomorph).
  Trilinear sampling of the rough momentum m_0 = L v_0 acts as a first-order (upwind-like) derivative and the
  sampling clamps at the border instead of wrapping, so it differs from the Eulerian forms by a few % of v
  (0.06 voxel in the centre at max |v0| = 3 voxels, 32^3), more near the border.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .epdiff import check_metric, laplacian_eigenvalues
from .warp import integrate_flow, jacobian_matrix, warp

_SPATIAL = (-3, -2, -1)


def central_difference(f: torch.Tensor, axis: int) -> torch.Tensor:
    """Periodic central difference along spatial axis 0, 1 or 2 of (..., D, H, W)."""
    dim = f.ndim - 3 + axis
    return 0.5 * (torch.roll(f, -1, dim) - torch.roll(f, 1, dim))


class SpatialEPDiffShooting(nn.Module):
    """Full-resolution shooting: ``forward(v0) -> (displacement of phi_1^{-1}, [v_0 .. v_{N-1}])``."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        alpha: float = 3.0,
        gamma: float = 1.0,
        c: float = 3,
        steps: int = 10,
        dtype: torch.dtype = torch.float32,
        form: str = "eulerian",
    ):
        super().__init__()
        self.shape = check_metric(shape, alpha, gamma, c, steps)
        if form not in ("eulerian", "lagrangian"):
            raise InputError(f"form: expected 'eulerian' or 'lagrangian', got {form!r}")
        self.alpha, self.gamma, self.c, self.steps, self.form = alpha, gamma, c, steps, form
        d, h, w = self.shape
        freqs = [torch.fft.fftfreq(d, 1 / d), torch.fft.fftfreq(h, 1 / h), torch.fft.rfftfreq(w, 1 / w)]
        freqs = [k.to(torch.float64) for k in freqs]
        self.register_buffer("l_symbol", ((gamma + alpha * laplacian_eigenvalues(self.shape, freqs)) ** c).to(dtype))

    def _apply_symbol(self, f: torch.Tensor, power: int) -> torch.Tensor:
        spec = torch.fft.rfftn(f, dim=_SPATIAL) * self.l_symbol.to(f.dtype) ** power
        return torch.fft.irfftn(spec, s=self.shape, dim=_SPATIAL)

    def apply_l(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply_symbol(v, 1)

    def apply_k(self, m: torch.Tensor) -> torch.Tensor:
        return self._apply_symbol(m, -1)

    def energy(self, v: torch.Tensor) -> torch.Tensor:
        """(B,) <Lv, v> summed over voxels."""
        return (self.apply_l(v) * v).sum(dim=(1, 2, 3, 4))

    def _check(self, v0: torch.Tensor) -> None:
        if v0.ndim != 5 or v0.shape[1] != 3 or tuple(v0.shape[2:]) != self.shape or v0.is_complex():
            grid = ", ".join(map(str, self.shape))
            raise InputError(f"v0: expected a real (B, 3, {grid}) field, got {tuple(v0.shape)}; resample it to the grid")

    def epdiff_rhs(self, v: torch.Tensor) -> torch.Tensor:
        m = self.apply_l(v)
        dv = [central_difference(v, i) for i in range(3)]  # dv[i][:, j] = d v_j / d x_i
        advect = torch.stack([(dv[i] * m).sum(dim=1) for i in range(3)], dim=1)
        div = sum(central_difference(m * v[:, j : j + 1], j) for j in range(3))  # sum_j d_j (m_i v_j)
        return -self.apply_k(advect + div)

    def shoot(self, v0: torch.Tensor) -> list[torch.Tensor]:
        """Eulerian velocities [v(0), v(dt), ..., v(1)] by forward Euler."""
        self._check(v0)
        v, dt = v0, 1.0 / self.steps
        velocities = [v]
        for _ in range(self.steps):
            v = v + dt * self.epdiff_rhs(v)
            velocities.append(v)
        return velocities

    def _lagrangian(self, v0: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._check(v0)
        m0, dt = self.apply_l(v0), 1.0 / self.steps
        u, v, velocities = torch.zeros_like(v0), v0, []
        for n in range(self.steps):
            if n:  # m_t = Ad*_{phi_t^{-1}} m0
                jac = jacobian_matrix(u)  # [..., j, i] = d phi^{-1}_j / d x_i
                m_pulled = warp(m0, u).permute(0, 2, 3, 4, 1)
                m = torch.linalg.det(jac)[..., None] * torch.einsum("...ji,...j->...i", jac, m_pulled)
                v = self.apply_k(m.permute(0, 4, 1, 2, 3))
            velocities.append(v)
            u = warp(u, -dt * v) - dt * v if n else -dt * v
        return u, velocities

    def forward(self, v0: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.form == "lagrangian":
            return self._lagrangian(v0)
        velocities = self.shoot(v0)[:-1]
        return integrate_flow(velocities), velocities

    def shoot_and_warp(self, image: torch.Tensor, v0: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        disp, _ = self(v0)
        return warp(image, disp, mode=mode)
