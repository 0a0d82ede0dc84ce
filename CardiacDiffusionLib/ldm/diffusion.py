"""Latent diffusion: MONAI 3D ``DiffusionModelUNet`` on the frozen joint VAE's scaled latent.

Training is DDPM at uniform timesteps of MONAI's ``DDPMScheduler`` schedule, the network predicting
the noise (``prediction: epsilon``, the paper's) or the velocity v = sqrt(a) eps - sqrt(1 - a) z0
(``prediction: v``, Salimans & Ho 2022). Why v: with epsilon the latent's global statistics come out
wrong (the 32^3 model's sampled latents had per-channel means with sd 0.26-0.44 over samples where
the data's have 0.03-0.04, and 20 % less variance: dim, low-contrast images), because near t = T its small
noise errors are amplified by 1 / sqrt(alpha_bar) ~ 70 into the clean-latent estimate; v predicts
that estimate directly there. Sampling is deterministic DDIM on an explicit timestep list, reusing
:mod:`CardiacDiffusionLib.dmcvr.ddim` (MONAI's ``DDIMScheduler`` set_timesteps/step disagree since
1.6); ``steps`` is the knob. The latent is multiplied by ``latent_scale`` = 1/std of the trained
VAE's latents (a buffer, stored in the model file). Contrast conditioning (paper's proposal) is
not built yet: the datasets carry a ``contrast`` flag for it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from ..dmcvr.ddim import ddim_decode
from ..errors import InputError
from .vae import JointVAE

DEFAULT_UNET = {"channels": [32, 64, 64], "attention_levels": [False, False, True], "num_head_channels": [0, 0, 32],
                "num_res_blocks": 1, "norm_num_groups": 16}  # fmt: skip
DEFAULT_LDM = {"vae": {}, "unet": DEFAULT_UNET, "timesteps": 1000, "schedule": "scaled_linear_beta",
               "beta_start": 0.0015, "beta_end": 0.0195, "image_size": 32, "spacing_mm": 5.0,
               "prediction": "epsilon"}  # fmt: skip
#: config value -> MONAI's prediction_type; "epsilon" stays the default so files saved before the key existed load
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}


class LatentDiffusion(nn.Module):
    """VAE (frozen in training) + latent UNet + ``latent_scale`` buffer; config: see DEFAULT_LDM."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        cfg = {**DEFAULT_LDM, **(config or {})}
        cfg["unet"] = {**DEFAULT_UNET, **cfg["unet"]}
        self.config = cfg
        self.vae = JointVAE(cfg["vae"])
        latent = int(self.vae.config["latent_channels"])
        u = cfg["unet"]
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=latent, out_channels=latent, channels=tuple(u["channels"]),
            attention_levels=tuple(u["attention_levels"]), num_head_channels=tuple(u["num_head_channels"]),
            num_res_blocks=int(u["num_res_blocks"]), norm_num_groups=int(u["norm_num_groups"]), use_flash_attention=True,
        )  # fmt: skip
        if cfg["prediction"] not in PREDICTIONS:
            raise InputError(f"ldm config prediction: {cfg['prediction']!r}; use one of {', '.join(PREDICTIONS)}")
        self.scheduler = DDPMScheduler(num_train_timesteps=int(cfg["timesteps"]), schedule=cfg["schedule"],
                                       beta_start=cfg["beta_start"], beta_end=cfg["beta_end"],
                                       prediction_type=PREDICTIONS[cfg["prediction"]])  # fmt: skip
        self.register_buffer("latent_scale", torch.ones(()))

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        n = int(self.config["image_size"]) // self.vae.factor
        return (int(self.vae.config["latent_channels"]), n, n, n)

    def latents(self, image: torch.Tensor, labels: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Scaled latents of image/label pairs (no gradient to the VAE)."""
        with torch.no_grad():
            mu, sigma = self.vae.encode(image, labels)
            z = self.vae.ae.sampling(mu, sigma) if sample else mu
        return z * self.latent_scale

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latent -> (image in unit range (B, 1, ...), label map (B, ...) in 0..8)."""
        with torch.no_grad():
            image, logits = self.vae.decode(z / self.latent_scale)
        return image.clamp(-1, 1), logits.argmax(1)

    def eps(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise in ``z_t`` at timesteps ``t`` (from the network's v when it predicts v)."""
        out = self.unet(z_t, t)
        if self.config["prediction"] == "epsilon":
            return out
        a = self.scheduler.alphas_cumprod.to(z_t.device)[t].view(-1, *[1] * (z_t.dim() - 1))
        return a.sqrt() * out + (1 - a).sqrt() * z_t

    @torch.no_grad()
    def sample(self, n: int = 1, seed: int = 0, steps: int = 50, progress: Callable | None = None,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``n`` pairs (image (n, 1, N, N, N) in [-1, 1], labels (n, N, N, N)) by DDIM with ``steps`` net calls."""
        device = self.latent_scale.device
        if noise is None:
            gen = torch.Generator().manual_seed(int(seed))
            noise = torch.randn((n, *self.latent_shape), generator=gen)
        z = ddim_decode(self.eps, noise.to(device), self.scheduler.alphas_cumprod, steps, progress=progress)
        return self.decode(z)


def diffusion_loss(model: LatentDiffusion, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DDPM MSE of the noise (or velocity) prediction on the scaled latents of a batch."""
    return latent_diffusion_loss(model, model.latents(image, labels))


def latent_diffusion_loss(model: LatentDiffusion, z: torch.Tensor) -> torch.Tensor:
    """DDPM MSE of the noise (or velocity) prediction on scaled latents ``z``."""
    noise = torch.randn_like(z)
    t = torch.randint(0, model.scheduler.num_train_timesteps, (z.shape[0],), device=z.device)
    noisy = model.scheduler.add_noise(z, noise, t)
    target = noise if model.config["prediction"] == "epsilon" else model.scheduler.get_velocity(z, noise, t)
    return F.mse_loss(model.unet(noisy, t), target)


@torch.no_grad()
def latent_scale(vae: JointVAE, batches) -> float:
    """1 / std of the VAE's sampled latents over ``batches`` of (image, labels)."""
    zs = [vae.ae.sampling(*vae.encode(image, labels)) for image, labels in batches]
    return float(1.0 / torch.cat([z.flatten() for z in zs]).std())
