"""3D latent diffusion of paired CT image + 8-label volumes (Hu et al., ML4H 2024), SSL and evaluation.

vae.py (joint image + one-hot VAE on MONAI AutoencoderKL), diffusion.py (latent DiffusionModelUNet,
DDPM training, DDIM sampling), data.py (CT phantom dataset with the paper's augmentations),
cleanup.py (label clean-up), tasks.py (runner tasks), ssl.py (masked-image pretraining),
evaluate.py (``cardiac-diffusion evaluate ldm``). Importing this package registers the
model-store architectures ``ldm_vae`` and ``ldm``.
"""

from ..models.store import register_architecture


def build_vae(config: dict):
    from .vae import JointVAE

    return JointVAE(config)


def build_ldm(config: dict):
    from .diffusion import LatentDiffusion

    return LatentDiffusion(config)


register_architecture("ldm_vae", build_vae)
register_architecture("ldm", build_ldm)
