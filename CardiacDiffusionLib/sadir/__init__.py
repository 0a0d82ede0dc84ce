"""SADIR: LDDMM geodesic shooting (band-limited FLASH EPDiff and a spatial baseline), warping, and the
atlas + diffusion-predicted-velocity myocardium reconstruction (``reconstruct_myocardium``, loaded lazily)."""

from .epdiff import EPDiffShooting, laplacian_eigenvalues
from .spatial_epdiff import SpatialEPDiffShooting
from .warp import compose, integrate_flow, jacobian_determinant, jacobian_matrix, warp, warp_labels, warp_mask

__all__ = [
    "SadirResult",
    "reconstruct_myocardium",
    "EPDiffShooting",
    "SpatialEPDiffShooting",
    "compose",
    "integrate_flow",
    "jacobian_determinant",
    "jacobian_matrix",
    "laplacian_eigenvalues",
    "warp",
    "warp_labels",
    "warp_mask",
]


def __getattr__(name: str):
    # lazy: the reconstruction pulls in MONAI's networks and the model store, the shooting core does not
    if name in ("reconstruct_myocardium", "SadirResult"):
        from . import reconstruct

        return getattr(reconstruct, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
