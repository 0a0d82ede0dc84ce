"""Noisy boundaries of generated label maps (Hu et al., Fig. 5): a measure and a clean-up.

A voxel is *noisy* when it is (a) an island: a foreground voxel outside its label's largest
6-connected component (every structure of the CT anatomy is one piece), or (b) mislabelled: fewer
than ``min_agree`` of its 26 neighbours share its label (background voxels included, so holes
count). The fraction is taken over the labelled region: foreground voxels and their 26-neighbour
rim. On the phantoms' true labels it is 0 (tested). Clean-up: mark the noisy voxels, give each the
majority label of its clean neighbours (repeated while marked voxels with clean neighbours remain),
then keep each label's largest component once more and refill what that drops the same way.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_BOX = np.ones((3, 3, 3), dtype=np.float32)


def _neighbour_counts(labels: np.ndarray, n_classes: int, valid: np.ndarray | None = None) -> np.ndarray:
    """(n_classes, ...) count of each label among the 26 neighbours (only ``valid`` neighbours)."""
    out = np.empty((n_classes, *labels.shape), dtype=np.int16)
    for k in range(n_classes):
        mask = labels == k
        if valid is not None:
            mask &= valid
        out[k] = np.rint(ndimage.convolve(mask.astype(np.float32), _BOX, mode="constant")) - (mask if valid is None else mask)
    return out


def islands(labels: np.ndarray) -> np.ndarray:
    """Foreground voxels outside their label's largest 6-connected component."""
    out = np.zeros(labels.shape, bool)
    for k in np.unique(labels):
        if k == 0:
            continue
        comp, n = ndimage.label(labels == k)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out |= (comp > 0) & (comp != sizes.argmax())
    return out


def noisy_voxels(labels: np.ndarray, n_classes: int = 9, min_agree: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(noisy mask, labelled region mask) as defined in the module docstring."""
    labels = np.asarray(labels)
    counts = _neighbour_counts(labels, n_classes)
    own = np.take_along_axis(counts, labels[None].astype(np.int64), 0)[0]
    region = ndimage.binary_dilation(labels > 0, structure=np.ones((3, 3, 3), bool))
    noisy = (islands(labels) | (own < min_agree)) & region
    return noisy, region


def noise_report(labels: np.ndarray, n_classes: int = 9, min_agree: int = 3) -> dict[str, float]:
    """Noisy fraction, island fraction, and components per label (mean over present labels)."""
    noisy, region = noisy_voxels(labels, n_classes, min_agree)
    isl = islands(labels)
    comps = [ndimage.label(labels == k)[1] for k in range(1, n_classes) if np.any(labels == k)]
    n_region = max(int(region.sum()), 1)
    return {"noisy_fraction": float(noisy.sum() / n_region), "island_fraction": float(isl.sum() / n_region),
            "components_per_label": float(np.mean(comps)) if comps else 0.0}  # fmt: skip


def _refill(labels: np.ndarray, bad: np.ndarray, n_classes: int, rounds: int = 10) -> np.ndarray:
    out = labels.copy()
    for _ in range(rounds):
        if not bad.any():
            break
        counts = _neighbour_counts(out, n_classes, valid=~bad)
        has_good = counts.sum(0) > 0
        fill = bad & has_good
        out[fill] = counts.argmax(0)[fill]
        bad = bad & ~has_good
    return out


def clean_labels(labels: np.ndarray, n_classes: int = 9, min_agree: int = 3) -> np.ndarray:
    """Relabel noisy voxels by the majority of their clean neighbours; one component per label."""
    labels = np.asarray(labels)
    noisy, _ = noisy_voxels(labels, n_classes, min_agree)
    out = _refill(labels, noisy, n_classes)
    return _refill(out, islands(out), n_classes).astype(labels.dtype)
