"""Warping, composition, flow integration and Jacobians of dense displacement fields.

Convention (MONAI ``Warp``): a displacement ``u`` is a (B, 3, D, H, W) tensor in voxel units, channel i
along tensor axis i + 2, and a transform is ``x -> x + u(x)``. Warping an image by ``u`` samples it at
``x + u(x)``: for ``u`` the displacement of phi^{-1}, ``warp(image, u)`` is ``image o phi^{-1}``, i.e.
the image content moves along phi. Values outside the grid are taken from the border.
"""

from __future__ import annotations

import warnings

import torch
from monai.networks.blocks import Warp

from ..errors import InputError

_WARPS: dict[tuple, Warp] = {}


def _warp_layer(mode: str, padding_mode: str, device: torch.device, dtype: torch.dtype) -> Warp:
    # MONAI's Warp caches its reference grid by shape only, so one instance per (device, dtype) keeps a
    # cached CPU/float32 grid from meeting a CUDA/float64 displacement.
    key = (mode, padding_mode, device, dtype)
    if key not in _WARPS:
        with warnings.catch_warnings():  # "Using PyTorch native grid_sample": expected, not news
            warnings.simplefilter("ignore")
            _WARPS[key] = Warp(mode=mode, padding_mode=padding_mode)
    return _WARPS[key]


def check_displacement(disp: torch.Tensor, name: str = "displacement") -> None:
    if disp.ndim != 5 or disp.shape[1] != 3:
        raise InputError(f"{name}: expected shape (B, 3, D, H, W), got {tuple(disp.shape)}; pass a 3D vector field")


def warp(image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border") -> torch.Tensor:
    """Sample ``image`` (B or 1, C, D, H, W) at ``x + disp(x)``; mode "bilinear" (trilinear in 3D) or "nearest"."""
    check_displacement(disp)
    if image.ndim != 5 or image.shape[2:] != disp.shape[2:]:
        raise InputError(
            f"image: expected shape (B, C, {', '.join(map(str, disp.shape[2:]))}) to match the displacement, "
            f"got {tuple(image.shape)}; resample the image to the displacement grid"
        )
    if image.shape[0] == 1 and disp.shape[0] > 1:  # one atlas, many deformations
        image = image.expand(disp.shape[0], *image.shape[1:])
    elif image.shape[0] != disp.shape[0]:
        raise InputError(f"image: batch size {image.shape[0]} does not match displacement batch {disp.shape[0]}")
    image = image.to(disp.dtype)
    return _warp_layer(mode, padding_mode, disp.device, disp.dtype)(image, disp)


def warp_mask(mask: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Warp a binary mask by trilinear interpolation, then threshold at 0.5 (not differentiable)."""
    return warp(mask.to(disp.dtype), disp) >= 0.5


def warp_labels(labels: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Warp an integer label map (B, 1, D, H, W): trilinear on each one-hot channel, then argmax."""
    values = torch.unique(labels)
    onehot = torch.cat([(labels == v).to(disp.dtype) for v in values], dim=1)
    return values[warp(onehot, disp).argmax(dim=1, keepdim=True)]


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Displacement of (Id + a) o (Id + b): ``b(x) + a(x + b(x))``."""
    check_displacement(a, "first displacement")
    return b + warp(a, b)


def integrate_flow(velocities: list[torch.Tensor], inverse: bool = True) -> torch.Tensor:
    """Displacement of phi_1^{-1} (or phi_1) from velocities v_0..v_{N-1} on t in [0, 1], dt = 1/N.

    Inverse: phi^{-1}_{t+dt} = phi^{-1}_t o (Id - dt v_t), i.e. u <- -dt v + u(x - dt v(x)) (semi-Lagrangian).
    Forward: phi_{t+dt} = (Id + dt v_t) o phi_t, i.e. u <- u + dt v(x + u(x)).
    """
    dt = 1.0 / len(velocities)
    u = None
    for v in velocities:
        step = dt * v
        if u is None:
            u = -step if inverse else step
        elif inverse:
            u = warp(u, -step) - step
        else:
            u = u + warp(step, u)
    return u


def jacobian_matrix(disp: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W, 3, 3) matrix d(x + u)_j / dx_i stored at [..., j, i]; central differences, one-sided at edges."""
    check_displacement(disp)
    grads = torch.gradient(disp, dim=(2, 3, 4))  # grads[i][:, j] = d u_j / d x_i
    jac = torch.stack(grads, dim=2)  # (B, j, i, D, H, W)
    jac = jac + torch.eye(3, dtype=disp.dtype, device=disp.device)[None, :, :, None, None, None]
    return jac.permute(0, 3, 4, 5, 1, 2)


def jacobian_determinant(disp: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) determinant of the Jacobian of x -> x + disp(x)."""
    j = jacobian_matrix(disp)
    return (
        j[..., 0, 0] * (j[..., 1, 1] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 1])
        - j[..., 0, 1] * (j[..., 1, 0] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 0])
        + j[..., 0, 2] * (j[..., 1, 0] * j[..., 2, 1] - j[..., 1, 1] * j[..., 2, 0])
    )
