"""SADIR reconstruction model: a conditional diffusion model whose denoiser predicts the atlas velocity v0.

The diffused variable is the myocardium itself, x0 = 2 * mask - 1 on the 32^3 model grid (as in
SADIR). The denoiser is MONAI's 3D ``DiffusionModelUNet`` (time embedding, self-attention at the
coarsest level) fed [atlas, sparse slices, observed-plane mask, x_t] and the timestep t; it outputs a
3-channel velocity field, projected on the band-limited space (the v0 of :class:`EPDiffShooting`),
and its x0 prediction is the *deformed atlas* 2 * (atlas o phi_1^-1) - 1, so every prediction, at
every step, is the atlas moved by a diffeomorphism.

Sampling is deterministic DDIM (eta = 0) on the explicit timestep list of ``dmcvr.ddim``
(t_i = floor(i T / N)), from x at t_{N-1} (seeded noise) down to t_0; each step evaluates the
network at its own t (the timestep conditioning is used, see the tests). The answer is the last
step's v0 and deformed atlas.
"""

from __future__ import annotations

import math
import warnings

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from ..dmcvr.ddim import ddim_timesteps
from ..models.store import register_architecture
from .atlas import upsample_displacement
from .epdiff import EPDiffShooting
from .warp import warp

ARCHITECTURE = "sadir"
DEFAULTS = {
    "size": 32, "output_size": 64, "channels": [8, 16, 32], "attention_levels": [False, False, True],
    "num_res_blocks": 1, "num_head_channels": 8, "truncation": 12, "timesteps": 1000,
    # 4 groups: with one channel per group (GroupNorm = InstanceNorm) the additive time embedding of MONAI's
    # residual blocks is normalised away and the net ignores t
    "velocity_scale": 2.0, "sample_steps": 4, "norm_num_groups": 4,
}  # fmt: skip


def soft_dice(pred: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(B,) soft Dice of two [0, 1] volumes (B, 1, ...)."""
    dims = tuple(range(1, pred.ndim))
    return (2 * (pred * target).sum(dims) + eps) / (pred.sum(dims) + target.sum(dims) + eps)


def shape_fit(moved: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(SSD, soft Dice), batch means, of a deformed atlas against the truth: the training loss is SSD + 1 - Dice."""
    return ((moved - truth) ** 2).mean(), soft_dice(moved, truth).mean()


class SadirModel(nn.Module):
    """Denoiser + atlas (buffers ``atlas`` at the model size, ``atlas_fine`` at the output size; no gradient:
    training updates them in its alternating atlas steps, ``train.update_atlas``)."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        cfg = {**DEFAULTS, **(config or {})}
        self.config = cfg
        n, m = int(cfg["size"]), int(cfg["output_size"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.net = DiffusionModelUNet(
                spatial_dims=3, in_channels=4, out_channels=3, channels=tuple(cfg["channels"]),
                attention_levels=tuple(cfg["attention_levels"]), num_res_blocks=int(cfg["num_res_blocks"]),
                num_head_channels=int(cfg["num_head_channels"]), norm_num_groups=int(cfg["norm_num_groups"]),
            )  # fmt: skip
        self.shooting = EPDiffShooting((n, n, n), truncation=int(cfg["truncation"]))
        self.register_buffer("atlas", torch.zeros(1, 1, n, n, n))
        self.register_buffer("atlas_fine", torch.zeros(1, 1, m, m, m))
        abar = DDPMScheduler(num_train_timesteps=int(cfg["timesteps"])).alphas_cumprod.float()
        self.register_buffer("alphas_cumprod", abar, persistent=False)

    # --- pieces ----------------------------------------------------------------------------------
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Band-limited v0 coefficients (B, 3, T, T, T) from x_t (B, 1, n^3), t (B,), cond (B, 2, n^3)."""
        atlas = self.atlas.expand(x_t.shape[0], -1, -1, -1, -1)
        field = self.net(torch.cat([atlas, cond, x_t], dim=1), t) * float(self.config["velocity_scale"])
        return self.shooting.to_bandlimited(field)

    def deform(self, v_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(atlas o phi^-1 at the model size, displacement of phi^-1) for coefficients ``v_hat``."""
        disp, _ = self.shooting(v_hat)
        return warp(self.atlas, disp), disp

    # --- training --------------------------------------------------------------------------------
    def loss(
        self, truth: torch.Tensor, cond: torch.Tensor, reg: float = 1e-6, truth_fine: torch.Tensor | None = None,
        fine_weight: float = 0.0,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """SSD + (1 - Dice) of the deformed atlas against the soft truth (B, 1, n^3), + reg <Lv0, v0>;
        with ``truth_fine`` (B, 1, m^3) also ``fine_weight`` x the same terms for the output-size atlas
        (what is evaluated: the model-size displacement upsampled, :meth:`fine_atlas_warp`)."""
        b = truth.shape[0]
        t = torch.randint(0, len(self.alphas_cumprod), (b,), device=truth.device)
        a = self.alphas_cumprod[t].view(b, 1, 1, 1, 1)
        x_t = a.sqrt() * (2 * truth - 1) + (1 - a).sqrt() * torch.randn_like(truth)
        v_hat = self.velocity(x_t, t, cond)
        moved, disp = self.deform(v_hat)
        ssd, dice = shape_fit(moved, truth)
        energy = self.shooting.energy(v_hat).mean() / truth[0].numel()
        terms = {"loss": ssd + (1 - dice) + reg * energy, "ssd": ssd.detach(), "dice": dice.detach(),
                 "energy": energy.detach()}  # fmt: skip
        if truth_fine is not None and fine_weight > 0:
            moved_fine, _ = self.fine_atlas_warp(disp)
            ssd_fine, dice_fine = shape_fit(moved_fine, truth_fine)
            terms["loss"] = terms["loss"] + fine_weight * (ssd_fine + 1 - dice_fine)
            terms["dice_fine"] = dice_fine.detach()
        return terms

    # --- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, cond: torch.Tensor, steps: int | None = None, seed: int = 0, timesteps: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """DDIM over ``timesteps`` (default ddim_timesteps(T, steps)); returns (v0 coefficients, moved, disp)."""
        steps = int(steps or self.config["sample_steps"])
        ts = list(timesteps) if timesteps is not None else ddim_timesteps(len(self.alphas_cumprod), steps).tolist()
        abar = self.alphas_cumprod.tolist()  # Python floats (exact); .double() on the device fails on MPS
        g = torch.Generator(device="cpu").manual_seed(seed)
        n = self.atlas.shape[-1]
        x = torch.randn((cond.shape[0], 1, n, n, n), generator=g).to(cond)
        for i in range(len(ts) - 1, -1, -1):
            t = torch.full((cond.shape[0],), ts[i], dtype=torch.long, device=cond.device)
            v_hat = self.velocity(x, t, cond)
            moved, disp = self.deform(v_hat)
            a, a_prev = abar[ts[i]], (abar[ts[i - 1]] if i > 0 else 1.0)
            x0 = 2 * moved - 1
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        return v_hat, moved, disp

    def fine_atlas_warp(self, disp: torch.Tensor) -> torch.Tensor:
        """The output-size atlas deformed by the model-size displacement (upsampled, voxel units rescaled)."""
        up = upsample_displacement(disp, self.atlas_fine.shape[-1])
        return warp(self.atlas_fine, up), up


def build_sadir(config: dict) -> SadirModel:
    return SadirModel(config)


register_architecture(ARCHITECTURE, build_sadir)
