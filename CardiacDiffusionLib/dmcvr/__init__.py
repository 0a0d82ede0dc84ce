"""DMCVR: cardiac volume reconstruction from SAX slices with a morphology-conditioned diffusion autoencoder.

He et al., MICCAI 2023, on Diffusion Autoencoders (Preechakul et al., CVPR 2022), built on MONAI.
Three latents per slice (global semantic vector, regional morphology code, DDIM-inverted x_T);
missing slices are decoded from latents interpolated between their acquired neighbours.
"""

from .ddim import Cancelled, ddim_decode, ddim_encode, ddim_timesteps
from .interpolate import interpolation_plan, lerp, slerp
from .losses import diffusion_loss, seg_loss
from .model import DEFAULT_CONFIG, DMCVRModel, Latents, from_diffusion_range, to_diffusion_range

__all__ = [
    "DEFAULT_CONFIG",
    "Cancelled",
    "DMCVRModel",
    "Latents",
    "ddim_decode",
    "ddim_encode",
    "ddim_timesteps",
    "diffusion_loss",
    "from_diffusion_range",
    "interpolation_plan",
    "lerp",
    "seg_loss",
    "slerp",
    "to_diffusion_range",
]
