"""DMCVRModel: semantic encoder + conditional denoiser + morphology net, and what they do together.

Images in this API are single-channel SAX slices (B, 1, H, W) with intensities in [0, 1]
(per-volume 98th-percentile normalisation, as DMCVR). The diffusion model works in [-1, 1];
the mapping is done here in one place each way (:func:`to_diffusion_range`,
:func:`from_diffusion_range`), which avoids the reference code's bug of training on [0, 1] but
rendering with (x + 1) / 2.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple, Sequence

import torch
from monai.networks.schedulers import DDIMScheduler
from torch import nn

from ..errors import InputError
from .ddim import CancelCheck, Progress, ddim_decode, ddim_encode
from .interpolate import interpolation_plan, lerp, slerp
from .networks import ConditionalDenoiser, MorphologyNet, SemanticEncoder

#: Every size of the model; JSON-able, so a model store can rebuild the model from it.
DEFAULT_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "schedule": "linear_beta",  # MONAI schedule name; linear 1e-4 -> 0.02 as DiffAE / DMCVR
    "steps": 25,  # default DDIM steps for encode and decode
    "z_dim": 128,  # semantic vector length (DiffAE: 512)
    "semantic_channels": [16, 32, 64, 128],  # the 4 stages of a MONAI ResNet
    "morph_features": [16, 16, 32, 32, 64, 16],  # MONAI BasicUNet features
    "morph_level": 3,  # morphology code = BasicUNet down_3 output: features[3] channels at 1/8
    "num_classes": 4,  # background, LV cavity, LV myocardium, RV cavity (project convention)
    "morph_channels": 8,  # morphology channels concatenated to the denoiser input
    "unet_channels": [16, 32, 64, 64],
    "unet_attention_levels": [False, False, False, True],
    "unet_num_res_blocks": 1,
    "norm_num_groups": 8,
    "num_head_channels": 32,
}


class Latents(NamedTuple):
    """The three DMCVR codes of a batch of slices."""

    z_sem: torch.Tensor  # (B, z_dim) global semantic vector
    morph: torch.Tensor  # (B, C, H/2**level, W/2**level) regional morphology code
    x_T: torch.Tensor  # (B, 1, H, W) stochastic code (DDIM inversion at the top timestep)


def to_diffusion_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return images * 2 - 1


def from_diffusion_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def _check_config(config: dict[str, Any] | None) -> dict[str, Any]:
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    unknown = set(config or {}) - set(cfg)
    if unknown:
        raise InputError(f"DMCVR config: unknown keys {sorted(unknown)}; known keys are {sorted(cfg)}")
    cfg.update(copy.deepcopy(config or {}))
    if len(cfg["unet_channels"]) != len(cfg["unet_attention_levels"]):
        raise InputError("DMCVR config: unet_channels and unet_attention_levels must have the same length")
    if len(cfg["semantic_channels"]) != 4 or len(cfg["morph_features"]) != 6:
        raise InputError(
            "DMCVR config: semantic_channels needs 4 entries and morph_features 6 (MONAI ResNet, BasicUNet)"
        )
    return cfg


class DMCVRModel(nn.Module):
    """DMCVR (He et al., MICCAI 2023) on Diffusion Autoencoders, with MONAI networks.

    Training (see :mod:`.losses`): first the morphology net with ``seg_loss``; then, with it
    frozen, the semantic encoder and denoiser jointly with ``diffusion_loss``.
    """

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        self.config = _check_config(config)
        c = self.config
        self.semantic_encoder = SemanticEncoder(c["z_dim"], c["semantic_channels"], c["norm_num_groups"])
        self.morph_net = MorphologyNet(c["morph_features"], c["morph_level"], c["num_classes"])
        self.denoiser = ConditionalDenoiser(
            z_dim=c["z_dim"], morph_in_channels=self.morph_net.code_channels, morph_channels=c["morph_channels"],
            channels=c["unet_channels"], attention_levels=c["unet_attention_levels"],
            num_res_blocks=c["unet_num_res_blocks"], norm_num_groups=c["norm_num_groups"],
            num_head_channels=c["num_head_channels"],
        )
        self.scheduler = DDIMScheduler(num_train_timesteps=c["num_train_timesteps"], schedule=c["schedule"])
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.size_multiple = max(16, self.denoiser.size_multiple)

    # -- parameter groups for a training runner
    def diffusion_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the diffusion loss (semantic encoder + denoiser)."""
        return [*self.semantic_encoder.parameters(), *self.denoiser.parameters()]

    def morphology_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the segmentation loss (morphology net)."""
        return list(self.morph_net.parameters())

    # -- checks and small pieces
    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def check_images(self, images, name: str = "images") -> torch.Tensor:
        """Return images as float tensor (B, 1, H, W) on the model's device, or raise InputError."""
        x = torch.as_tensor(images, dtype=torch.float32, device=self.device)
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[0] < 1:
            raise InputError(f"{name}: expected shape (slices, 1, rows, cols), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise InputError(
                f"{name}: size {h}x{w} is not a multiple of {self.size_multiple}; pad or crop (e.g. to 128x128)"
            )
        if not torch.isfinite(x).all():
            raise InputError(f"{name}: holds NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise InputError(
                f"{name}: intensities {lo:.3g}..{hi:.3g} are outside [0, 1]; normalise each volume by its "
                "98th percentile and clip to [0, 1] first"
            )
        return x

    def semantic(self, images: torch.Tensor) -> torch.Tensor:
        """z_sem (B, z_dim) of [0, 1] images (with gradient; used in training)."""
        return self.semantic_encoder(to_diffusion_range(images))

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, z_sem: torch.Tensor, morph: torch.Tensor) -> torch.Tensor:
        """Predicted noise for x_t (diffusion range) at timesteps t (B,)."""
        return self.denoiser(x_t, t, z_sem, morph)

    def eps_fn(self, z_sem: torch.Tensor, morph: torch.Tensor):
        """``eps(x_t, t)`` with the conditioning fixed, as a DDIM loop calls it (``ConditionalDenoiser.bind``: equal to
        :meth:`eps`, the per-loop constants computed once)."""
        return self.denoiser.bind(z_sem, morph)

    # -- inference
    def encode(
        self, images, steps: int | None = None, progress: Progress | None = None, cancel: CancelCheck | None = None
    ) -> Latents:
        """The three latents of [0, 1] slices (B, 1, H, W); x_T by DDIM inversion with ``steps`` steps."""
        x = self.check_images(images)
        with torch.inference_mode():
            z, m = self.semantic(x), self.morph_net.encode(x)
            x_T = ddim_encode(
                self.eps_fn(z, m), to_diffusion_range(x), self.alphas_cumprod,
                steps or self.config["steps"], progress, cancel,
            )
        return Latents(z, m, x_T)

    def decode(
        self,
        latents: Latents,
        steps: int | None = None,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
        clip_x0: bool = False,
    ) -> torch.Tensor:
        """[0, 1] slices (B, 1, H, W) from latents by deterministic DDIM sampling."""
        z, m, x_T = (t.to(self.device) for t in latents)
        with torch.inference_mode():
            x0 = ddim_decode(
                self.eps_fn(z, m), x_T, self.alphas_cumprod,
                steps or self.config["steps"], progress, cancel, clip_x0,
            )
        return from_diffusion_range(x0)

    def segment(self, images) -> torch.Tensor:
        """Labels (B, H, W) in the project convention (0 bg, 1 LV cavity, 2 LV myocardium, 3 RV cavity)."""
        x = self.check_images(images)
        with torch.inference_mode():
            return self.morph_net(x).argmax(dim=1)

    @staticmethod
    def interpolate(a: Latents, b: Latents, w: float | torch.Tensor) -> Latents:
        """Latents between a (w = 0) and b (w = 1): lerp z_sem and morphology, slerp x_T (as DiffAE)."""
        return Latents(lerp(a.z_sem, b.z_sem, w), lerp(a.morph, b.morph, w), slerp(a.x_T, b.x_T, w))

    def fill_stack(
        self,
        images,
        positions_mm: Sequence[float],
        target_positions_mm: Sequence[float],
        steps: int | None = None,
        redecode_acquired: bool = False,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Slices at ``target_positions_mm`` (mm along the stack normal) from acquired slices.

        images (n, 1, H, W) in [0, 1] at ``positions_mm`` (n,), any order and uneven gaps.
        Returns images (m, 1, H, W) in [0, 1] and labels (m, H, W) from the morphology net.
        Targets at an acquired position reuse that slice, or with ``redecode_acquired`` are
        encoded and decoded like the others (DMCVR's reconstruction). All slices to encode run in
        one batch, then all slices to decode in one batch. ``progress(done, total)`` counts DDIM
        steps over both loops.
        """
        x = self.check_images(images)
        if len(positions_mm) != x.shape[0]:
            raise InputError(f"positions_mm: {len(positions_mm)} positions for {x.shape[0]} slices")
        lo, hi, w = interpolation_plan(positions_mm, target_positions_mm)
        steps = steps or self.config["steps"]
        acquired = (lo == hi) & (not redecode_acquired)
        todo = ~acquired
        out = torch.empty((len(w), *x.shape[1:]), dtype=x.dtype, device=self.device)
        out[torch.as_tensor(acquired, device=self.device)] = x[torch.as_tensor(lo[acquired], device=self.device)]
        if todo.any():
            need = sorted(set(lo[todo].tolist()) | set(hi[todo].tolist()))
            row = {s: k for k, s in enumerate(need)}
            total = 2 * steps
            enc_progress = (lambda k, n: progress(k, total)) if progress else None
            dec_progress = (lambda k, n: progress(steps + k, total)) if progress else None
            lat = self.encode(x[need], steps, enc_progress, cancel)
            ia = torch.as_tensor([row[s] for s in lo[todo]], dtype=torch.long, device=self.device)
            ib = torch.as_tensor([row[s] for s in hi[todo]], dtype=torch.long, device=self.device)
            a = Latents(*(t[ia] for t in lat))
            b = Latents(*(t[ib] for t in lat))
            wt = torch.as_tensor(w[todo], dtype=torch.float32, device=self.device)
            new = self.decode(self.interpolate(a, b, wt), steps, dec_progress, cancel)
            out[torch.as_tensor(todo, device=self.device)] = new
        return out, self.segment(out)
