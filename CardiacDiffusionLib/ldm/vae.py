"""Joint image + label VAE: MONAI ``AutoencoderKL`` with the paper's two one-layer input encoders.

Input: the image (1 channel, unit range, see data.py) and the one-hot labels (9 channels:
background + 8 CT labels). We built the paper's form literally: two one-layer 3x3x3
convolutions, one for the image and one for the one-hot mask, whose outputs are summed and fed to
MONAI's shared encoder (it replaces ``encoder.blocks[0]``). This equals one convolution over the
10-channel concatenation (tested); the two branches just keep the paper's structure visible.
The decoder's last convolution gives 10 channels: the image (channel 0) and 9 label logits.

Losses: L1 on the image, Dice + cross-entropy on the label logits (MONAI ``DiceCELoss``), KL to
N(0, 1); an optional adversarial term from a MONAI ``PatchDiscriminator`` on the image (off by
default: ``adv_weight: 0``). No perceptual loss: its pretrained weights cannot be loaded offline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import nn
from torch.func import functional_call

from ..labels import CT_LABELS

N_CLASSES = len(CT_LABELS) + 1  # background + 8 CT labels

DEFAULT_VAE = {"channels": [16, 32], "num_res_blocks": 1, "latent_channels": 3, "norm_num_groups": 8,
               "n_classes": N_CLASSES, "adv_weight": 0.0}  # fmt: skip


class JointInput(nn.Module):
    """Two one-layer encoders, image (1 ch) and one-hot labels (n_classes ch), summed."""

    def __init__(self, n_classes: int, out_channels: int):
        super().__init__()
        self.image_conv = nn.Conv3d(1, out_channels, 3, padding=1)
        self.label_conv = nn.Conv3d(n_classes, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_conv(x[:, :1]) + self.label_conv(x[:, 1:])


class JointVAE(nn.Module):
    """``encode(image, labels) -> (mu, sigma)``, ``decode(z) -> (image, logits)``; config: see DEFAULT_VAE."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        cfg = {**DEFAULT_VAE, **(config or {})}
        self.config = cfg
        ch = tuple(int(c) for c in cfg["channels"])
        self.n_classes = int(cfg["n_classes"])
        self.ae = AutoencoderKL(
            spatial_dims=3, in_channels=1 + self.n_classes, out_channels=1 + self.n_classes,
            num_res_blocks=(int(cfg["num_res_blocks"]),) * len(ch), channels=ch, attention_levels=(False,) * len(ch),
            latent_channels=int(cfg["latent_channels"]), norm_num_groups=int(cfg["norm_num_groups"]),
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        )  # fmt: skip
        self.ae.encoder.blocks[0] = JointInput(self.n_classes, ch[0])
        self.disc = None
        if float(cfg["adv_weight"]) > 0:
            self.disc = PatchDiscriminator(spatial_dims=3, num_layers_d=2, channels=16, in_channels=1, out_channels=1)

    @property
    def factor(self) -> int:
        """Spatial downsampling factor image -> latent."""
        return 2 ** (len(self.config["channels"]) - 1)

    def joint_input(self, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels.long(), self.n_classes).movedim(-1, 1).to(image.dtype)
        return torch.cat([image, onehot], dim=1)

    def encode(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ae.encode(self.joint_input(image, labels))

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.ae.decode(z)
        return out[:, :1], out[:, 1:]

    def forward(self, image: torch.Tensor, labels: torch.Tensor):
        mu, sigma = self.encode(image, labels)
        recon, logits = self.decode(self.ae.sampling(mu, sigma))
        return recon, logits, mu, sigma

    @torch.no_grad()
    def round_trip(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic reconstruction (the latent mean): (image, label map)."""
        recon, logits = self.decode(self.encode(image, labels)[0])
        return recon, logits.argmax(1)


_DICE_CE = DiceCELoss(to_onehot_y=True, softmax=True)


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)), summed over the latent, mean over the batch."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1)
    return kl.flatten(1).sum(1).mean()


def vae_losses(model: JointVAE, image: torch.Tensor, labels: torch.Tensor, kl_weight: float = 1e-6,
               label_weight: float = 1.0) -> dict[str, torch.Tensor]:  # fmt: skip
    """``loss`` = L1 + label_weight (Dice + CE) + kl_weight KL (+ adv_weight adversarial), and each term."""
    recon, logits, mu, sigma = model(image, labels)
    l1 = (recon - image).abs().mean()
    seg = _DICE_CE(logits, labels[:, None])
    kl = kl_loss(mu, sigma)
    out = {"l1": l1, "dice_ce": seg, "kl": kl}
    loss = l1 + label_weight * seg + kl_weight * kl
    if model.disc is not None:
        # One optimiser trains both nets: the generator term sees the discriminator through detached
        # weights (no gradient to D), the discriminator term sees a detached reconstruction.
        adv = PatchAdversarialLoss(criterion="least_squares")
        frozen = {k: v.detach() for k, v in model.disc.named_parameters()}
        g = adv(functional_call(model.disc, frozen, (recon,))[-1], target_is_real=True, for_discriminator=False)
        d_fake = adv(model.disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
        d_real = adv(model.disc(image)[-1], target_is_real=True, for_discriminator=True)
        out.update(adv_g=g, adv_d=0.5 * (d_fake + d_real))
        loss = loss + float(model.config["adv_weight"]) * g + 0.5 * (d_fake + d_real)
    out = {k: v.detach() for k, v in out.items()}
    out["loss"] = loss
    return out
