"""Evaluation metrics: overlap (Dice, Jaccard, VOE, RVD), surface distances in mm, PSNR/SSIM, paired comparison.

Definitions, units, HD95 variants and the empty-mask convention: docs/METRICS.md. The names below are imported
from their module on first use (``overlap`` alone loads neither SciPy nor scikit-image).
"""

from ..utils.lazy import lazy_names

__all__, __getattr__, __dir__ = lazy_names(__name__, {
    "image": ("psnr", "ssim"),
    "overlap": ("dice", "jaccard", "per_label", "rvd_percent", "voe_percent"),
    "paired": ("paired_difference",),
    "surface": ("DEFAULT_HD95_VARIANT", "HD95_VARIANTS", "SurfaceDistances", "asd", "assd", "hd", "hd95",
                "surface_distances", "surface_distances_from_images"),
})  # fmt: skip
