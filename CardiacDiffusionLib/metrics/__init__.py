"""Evaluation metrics: overlap (Dice, Jaccard, VOE, RVD), surface distances in mm, PSNR/SSIM, paired comparison.

Definitions, units, HD95 variants and the empty-mask convention: docs/METRICS.md. The names below are imported
from their module on first use (``overlap`` alone loads neither SciPy nor scikit-image).
"""

from importlib import import_module

_MODULES = {
    "image": ("psnr", "ssim"),
    "overlap": ("dice", "jaccard", "per_label", "rvd_percent", "voe_percent"),
    "paired": ("paired_difference",),
    "surface": ("DEFAULT_HD95_VARIANT", "HD95_VARIANTS", "SurfaceDistances", "asd", "assd", "hd", "hd95",
                "surface_distances", "surface_distances_from_images"),
}  # fmt: skip
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
