"""Evaluation metrics: overlap (Dice, Jaccard, VOE, RVD), surface distances in mm, PSNR/SSIM, paired comparison.

Definitions, units, HD95 variants and the empty-mask convention: docs/METRICS.md.
"""

from .image import psnr, ssim
from .overlap import dice, jaccard, per_label, rvd_percent, voe_percent
from .paired import paired_difference
from .surface import (
    DEFAULT_HD95_VARIANT,
    HD95_VARIANTS,
    SurfaceDistances,
    asd,
    assd,
    hd,
    hd95,
    surface_distances,
    surface_distances_from_images,
)

__all__ = [
    "DEFAULT_HD95_VARIANT", "HD95_VARIANTS", "SurfaceDistances", "asd", "assd", "dice", "hd", "hd95",
    "jaccard", "paired_difference", "per_label", "psnr", "rvd_percent", "ssim", "surface_distances", "surface_distances_from_images",
    "voe_percent",
]
