"""SADIR deformation engine: LDDMM geodesic shooting (band-limited FLASH EPDiff and a spatial baseline) and warping."""

from .epdiff import EPDiffShooting, laplacian_eigenvalues
from .spatial_epdiff import SpatialEPDiffShooting
from .warp import compose, integrate_flow, jacobian_determinant, jacobian_matrix, warp, warp_labels, warp_mask

__all__ = [
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
