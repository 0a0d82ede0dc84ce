"""Sunnybrook expert contours: read, rasterise onto DICOM slices, place in patient space.

Files are ``IM-0001-NNNN-{i,o}contour-manual.txt`` with one ``x y`` pair per line in pixel units,
``x`` = column and ``y`` = row, ``NNNN`` = the image's InstanceNumber. The i-contour is the LV
endocardium, the o-contour the epicardium.

Pixel convention: integer coordinates are pixel centres (pixel ``(r, c)`` is centred at ``x = c, y = r``),
as for DICOM's ImagePositionPatient, which is the centre of the first pixel; a pixel belongs to a
contour when its centre lies inside the polygon (``skimage.draw.polygon2mask``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from skimage.draw import polygon2mask

from ..errors import InputError
from ..geometry.stack import SliceStack

_NAME = re.compile(r"IM-\d+-(\d+)-([io])contour-manual\.txt$")


def read_contour(path) -> np.ndarray:
    """Contour points ``(N, 2)`` as ``(x = column, y = row)`` pixel coordinates."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"contour: file not found: {path}")
    points = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            points.append((float(parts[0]), float(parts[1])))
        except ValueError:
            raise InputError(f"contour {path}: line {number} is not an 'x y' pair: {line.strip()!r}") from None
    if len(points) < 3:
        raise InputError(f"contour {path}: needs at least 3 points, found {len(points)}")
    return np.asarray(points, dtype=np.float64)


def contour_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``(rows, cols)`` mask of the pixels whose centres lie inside the ``(x, y)`` polygon."""
    return polygon2mask(shape, np.asarray(points)[:, ::-1])  # polygon2mask wants (row, col)


def contour_points_lps(points: np.ndarray, stack: SliceStack, slice_index: int) -> np.ndarray:
    """``(N, 3)`` patient LPS mm of ``(x, y)`` pixel points on slice ``slice_index`` of ``stack``."""
    points = np.asarray(points, dtype=np.float64)
    sx, sy = stack.pixel_spacing
    return (
        stack.origins[slice_index][None, :]
        + (points[:, 0] * sx)[:, None] * stack.row_dir[None, :]
        + (points[:, 1] * sy)[:, None] * stack.col_dir[None, :]
    )


def find_contours(contour_dir) -> dict[int, dict[str, Path]]:
    """``{instance number: {"i": path, "o": path}}`` of the contour files under ``contour_dir``."""
    folder = Path(contour_dir)
    if not folder.is_dir():
        raise InputError(f"contours: file not found: {folder}")
    found: dict[int, dict[str, Path]] = {}
    for path in sorted(folder.rglob("*contour-manual.txt")):
        match = _NAME.search(path.name)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = path
    if not found:
        raise InputError(f"contours: no IM-....-NNNN-{{i,o}}contour-manual.txt files under {folder}")
    return found


def sunnybrook_labels(stack: SliceStack, contour_dir) -> tuple[np.ndarray, list[dict]]:
    """Project labels from the contours drawn on this stack's images, and which slices got them.

    Inside the i-contour is 1 (LV cavity); between i- and o-contour 2 (LV myocardium) where an o-contour
    exists. Contour files are matched to slices by InstanceNumber (``stack.meta["slice_meta"]``), so
    contours drawn on another phase are left out. Returns ``(labels (n, rows, cols) uint8, contoured)``
    with ``contoured`` one ``{"slice", "instance", "i", "o"}`` dict per labelled slice.
    An o-contour without an i-contour on its slice is ignored (its cavity is unknown).
    """
    slice_meta = stack.meta.get("slice_meta")
    if not slice_meta:
        raise InputError(f"{stack.source}: has no per-slice DICOM metadata; read it with read_dicom_stack")
    slice_of = {m["instance_number"]: k for k, m in enumerate(slice_meta)}
    contours = find_contours(contour_dir)
    labels = np.zeros(stack.pixels.shape, dtype=np.uint8)
    contoured = []
    for instance, files in sorted(contours.items()):
        k = slice_of.get(instance)
        if k is None or "i" not in files:
            continue
        inner = contour_mask(read_contour(files["i"]), stack.shape2d)
        if "o" in files:
            outer = contour_mask(read_contour(files["o"]), stack.shape2d)
            labels[k][outer & ~inner] = 2
        labels[k][inner] = 1
        contoured.append({"slice": k, "instance": instance, "i": True, "o": "o" in files})
    if not contoured:
        raise InputError(
            f"{stack.source}: none of the {len(contours)} contoured images ({sorted(contours)[:6]}...) is in this "
            f"phase (instances {[m['instance_number'] for m in slice_meta]}); read the phase they were drawn on"
        )
    return labels, contoured
