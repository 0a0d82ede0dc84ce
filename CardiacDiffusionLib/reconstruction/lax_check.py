"""The LAX check: Dice of a reconstructed SAX label volume on each LAX plane.

The volume is resampled (nearest neighbour, in physical space) onto the LAX image's grid; Dice
is computed per label over the LAX pixels that lie inside the volume's extent only (the LAX
image also shows atria and the apex cap that no SAX stack covers). A label absent from both the
LAX labels and the resampled volume inside that region gets ``None`` (undefined, not 1).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry.planes import as_plane, coverage_mask, resample_to
from ..labels import MR_LABELS, check_label_values
from ..metrics.overlap import dice


def lax_dice(
    volume_labels: sitk.Image, lax_labels: sitk.Image, name: str = "LAX labels", labels: dict[int, str] = MR_LABELS
) -> dict[str, float | None]:
    """Per-label Dice of ``volume_labels`` against one LAX label image."""
    lax_labels = as_plane(lax_labels, name)
    lax = sitk.GetArrayFromImage(lax_labels)
    check_label_values(lax, [0, *labels], name)
    inside = coverage_mask(volume_labels, lax_labels)
    if not inside.any():
        raise InputError(
            f"{name}: the LAX plane does not intersect the reconstructed SAX volume; "
            "check that both come from the same patient and study (same frame of reference)"
        )
    predicted = sitk.GetArrayFromImage(resample_to(volume_labels, lax_labels, labels=True))
    table: dict[str, float | None] = {}
    for value, label_name in labels.items():
        d = dice(predicted[inside] == value, lax[inside] == value)
        table[label_name] = None if np.isnan(d) else round(float(d), 4)
    return table


def lax_dice_table(
    volume_labels: sitk.Image, lax: dict[str, sitk.Image], labels: dict[int, str] = MR_LABELS
) -> dict[str, dict[str, float | None]]:
    """``{lax name: {label: dice}}`` for several LAX label images."""
    return {key: lax_dice(volume_labels, image, key, labels) for key, image in lax.items()}


def format_table(rows: dict[str, dict[str, float | None]], labels=tuple(MR_LABELS.values())) -> str:
    """A plain-text table, one row per entry."""
    width = max([len(k) for k in rows] + [10])
    lines = [f"{'':<{width}}  " + "  ".join(f"{name:>6}" for name in labels)]
    for key, row in rows.items():
        cells = ["   n/a" if row.get(n) is None else f"{row[n]:6.3f}" for n in labels]
        lines.append(f"{key:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
