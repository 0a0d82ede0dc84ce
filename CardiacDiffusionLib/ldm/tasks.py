"""Runner tasks of the LDM recipe (training/presets/ldm.yaml): ``ldm_vae`` then ``ldm_diffusion``.

The diffusion stage's ``model.vae`` is the VAE stage's exported file (``{stage:vae}``); its weights
are loaded, frozen, and 1/std of its latents over ``model.scale_phantoms`` training phantoms is
stored as the ``latent_scale`` buffer of the exported LDM (the file rebuilds without the VAE path).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import InputError
from ..models.store import load_model
from ..training.task import Task, register_task
from .data import TEST_SEED, CTPhantomPairs, EncodedPairs
from .diffusion import DEFAULT_LDM, LatentDiffusion, diffusion_loss, latent_diffusion_loss, latent_scale
from .vae import DEFAULT_VAE, JointVAE, vae_losses


class VAETask(Task):
    architecture = "ldm_vae"
    model_signature, data_signature = {**DEFAULT_VAE, "kl_weight": 1e-6, "label_weight": 1.0}, CTPhantomPairs

    def build_model(self, config: dict) -> nn.Module:
        cfg = {k: v for k, v in config.items() if k not in ("kl_weight", "label_weight")}
        self.weights = {"kl_weight": float(config.get("kl_weight", 1e-6)),
                        "label_weight": float(config.get("label_weight", 1.0))}  # fmt: skip
        model = JointVAE(cfg)
        self.config = model.config
        return model

    def build_dataset(self, config: dict) -> Dataset:
        self.size = int(config.get("size", 32))
        return CTPhantomPairs(**config)

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        return vae_losses(model, batch["image"], batch["labels"], **self.weights)

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        data = CTPhantomPairs(4, TEST_SEED, self.size, augment=False)
        image = torch.stack([d["image"] for d in data])
        labels = torch.stack([d["labels"] for d in data])
        recon, pred = model.round_trip(image, labels)
        dice = [2 * ((pred == k) & (labels == k)).sum() / ((pred == k).sum() + (labels == k).sum()) for k in range(1, 9)]
        return {"val_l1": float((recon - image).abs().mean()), "val_dice": float(torch.stack(dice).mean())}

    def model_config(self, config: dict) -> dict:
        return self.config


class DiffusionTask(Task):
    architecture = "ldm"
    #: model.vae: the VAE file or name (not DEFAULT_LDM's config dict); data: CTPhantomPairs' keywords + encoded_draws
    model_signature = {**DEFAULT_LDM, "vae": "{stage:vae}", "scale_phantoms": 32}
    data_signature = {**{k: p.default for k, p in inspect.signature(CTPhantomPairs).parameters.items()}, "encoded_draws": 0}

    def build_model(self, config: dict) -> nn.Module:
        config = dict(config)
        vae_path = config.pop("vae", None)
        n_scale = int(config.pop("scale_phantoms", 32))
        if not vae_path:
            raise InputError("model.vae: give the trained VAE (a .safetensors file or a registered name)")
        if str(vae_path).endswith(".safetensors") and not Path(vae_path).is_file():
            raise InputError(f"model.vae {vae_path}: file not found; train the VAE stage first (`train ldm` runs both "
                             "stages, `--stage vae` the first) or give a trained VAE")  # fmt: skip
        vae = load_model(vae_path).module
        if not isinstance(vae, JointVAE):
            raise InputError(f"model.vae {vae_path}: not an ldm_vae model")
        model = LatentDiffusion({**config, "vae": vae.config})
        model.vae.load_state_dict(vae.state_dict())
        model.vae.eval()
        data = CTPhantomPairs(n_scale, 0, int(model.config["image_size"]), augment=False)
        batches = [(torch.stack([data[i]["image"] for i in range(j, min(j + 8, n_scale))]),
                    torch.stack([data[i]["labels"] for i in range(j, min(j + 8, n_scale))]))
                   for j in range(0, n_scale, 8)]  # fmt: skip
        model.latent_scale.fill_(latent_scale(model.vae, batches))
        self.config = model.config
        self.vae = model.vae
        return model

    def parameters(self, model: nn.Module):
        return model.unet.parameters()

    def build_dataset(self, config: dict) -> Dataset:
        config = dict(config)
        draws = int(config.pop("encoded_draws", 0))  # > 0: encode that many augmented passes once (EncodedPairs)
        pairs = CTPhantomPairs(**config)
        return EncodedPairs(pairs, self.vae, draws) if draws > 0 else pairs

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        model.vae.eval()  # frozen: no dropout/norm statistics change
        if "mu" in batch:
            return latent_diffusion_loss(model, model.vae.ae.sampling(batch["mu"], batch["sigma"]) * model.latent_scale)
        return diffusion_loss(model, batch["image"], batch["labels"])

    def model_config(self, config: dict) -> dict:
        return self.config


register_task("ldm_vae", VAETask)
register_task("ldm_diffusion", DiffusionTask)
