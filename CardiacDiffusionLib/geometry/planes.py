"""2D planes in 3D: make a plane image (a LAX view) and resample any volume onto it.

A plane image is a SimpleITK 3D image of one slice (size ``(cols, rows, 1)``): its direction
holds the in-plane axes and the normal, so it carries its full geometry through NIfTI/NRRD.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError


def plane_image(
    center: np.ndarray,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    size: tuple[int, int],
    spacing: tuple[float, float],
    thickness: float = 1.0,
    pixel_type: int = sitk.sitkFloat32,
) -> sitk.Image:
    """An empty single-slice image of ``size = (cols, rows)`` centred on ``center`` (LPS mm)."""
    row_dir = np.asarray(row_dir, float) / np.linalg.norm(row_dir)
    col_dir = np.asarray(col_dir, float) / np.linalg.norm(col_dir)
    col_dir = col_dir - (col_dir @ row_dir) * row_dir
    col_dir /= np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    origin = (
        np.asarray(center, float)
        - row_dir * spacing[0] * (size[0] - 1) / 2.0
        - col_dir * spacing[1] * (size[1] - 1) / 2.0
    )
    image = sitk.Image(int(size[0]), int(size[1]), 1, pixel_type)
    image.SetSpacing((float(spacing[0]), float(spacing[1]), float(thickness)))
    image.SetOrigin(tuple(origin.tolist()))
    image.SetDirection(tuple(direction.flatten().tolist()))
    return image


def is_plane(image: sitk.Image) -> bool:
    return image.GetDimension() == 2 or (image.GetDimension() == 3 and image.GetSize()[2] == 1)


def as_plane(image: sitk.Image, name: str = "LAX image") -> sitk.Image:
    """Return ``image`` as a 3D single-slice image; refuse stacks of several slices."""
    if image.GetDimension() == 2:
        raise InputError(
            f"{name}: a 2D image without a slice position/orientation in 3D; give a NIfTI/NRRD/DICOM file "
            "that stores the plane's 3D geometry"
        )
    if image.GetDimension() != 3 or image.GetSize()[2] != 1:
        raise InputError(f"{name}: expected a single-slice image (size x*y*1), got size {image.GetSize()}")
    return image


def resample_to(
    volume: sitk.Image, reference: sitk.Image, labels: bool, default: float = 0.0
) -> sitk.Image:
    """Resample ``volume`` onto ``reference``'s grid in physical space (nearest for labels, linear otherwise)."""
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    pixel_type = volume.GetPixelID() if labels else sitk.sitkFloat32
    return sitk.Resample(volume, reference, sitk.Transform(), interpolator, default, pixel_type)


def coverage_mask(volume: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Boolean array on ``reference``'s grid: True where the pixel centre lies inside ``volume``'s extent.

    The extent is the volume's voxel-centre box widened by half a voxel on every side.
    """
    points = grid_points(reference)
    index = physical_to_continuous_index(volume, points)
    size = np.array(volume.GetSize(), float)
    inside = np.all((index >= -0.5) & (index <= size - 0.5), axis=-1)
    return inside.reshape(tuple(reversed(reference.GetSize())))


def grid_points(image: sitk.Image) -> np.ndarray:
    """LPS coordinates of every voxel centre, shaped ``(z, y, x, 3)`` like the image's array."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(s) for s in reversed(size)), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(np.float64)
    return index_to_physical(image, ijk)


def index_to_physical(image: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    scaled = ijk * np.array(image.GetSpacing())
    return scaled @ direction.T + np.array(image.GetOrigin())


def physical_to_continuous_index(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    rel = np.asarray(points, float) - np.array(image.GetOrigin())
    return (rel @ np.linalg.inv(direction).T) / np.array(image.GetSpacing())
