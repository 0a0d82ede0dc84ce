"""A one-page PNG report: SAX slices, a LAX plane with each method's labels, and the Dice table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from .geometry.planes import coverage_mask, resample_to  # noqa: E402
from .geometry.stack import SliceStack  # noqa: E402
from .labels import MR_LABEL_COLORS, MR_LABELS  # noqa: E402

LABEL_CMAP = ListedColormap([(0, 0, 0, 0)] + [(*MR_LABEL_COLORS[n], 0.45) for n in MR_LABELS.values()])


def _overlay(ax, image: np.ndarray, labels: np.ndarray | None, title: str) -> None:
    ax.imshow(image, cmap="gray")
    if labels is not None:
        ax.imshow(labels, cmap=LABEL_CMAP, vmin=0, vmax=len(MR_LABELS), interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def write_report(
    path: Path,
    sax: SliceStack,
    lax_image: sitk.Image,
    lax_labels: sitk.Image,
    reconstructions: dict[str, sitk.Image],
    table: dict[str, dict[str, float | None]],
    title: str = "CardiacDiffusion",
) -> Path:
    """Write the report figure; ``table`` is ``{row name: {label: dice}}``."""
    n_methods = len(reconstructions)
    fig = plt.figure(figsize=(3 * max(4, n_methods + 1), 9))
    grid = fig.add_gridspec(3, max(4, n_methods + 1))
    picks = np.linspace(0, sax.n - 1, 4).round().astype(int)
    for col, k in enumerate(picks):
        _overlay(fig.add_subplot(grid[0, col]), sax.pixels[k], sax.labels[k] if sax.labels is not None else None,
                 f"SAX slice {k + 1}/{sax.n}")
    lax = sitk.GetArrayFromImage(lax_image)[0]
    truth = sitk.GetArrayFromImage(lax_labels)[0]
    _overlay(fig.add_subplot(grid[1, 0]), lax, truth, "LAX labels (truth)")
    for col, (name, volume) in enumerate(reconstructions.items(), start=1):
        on_plane = sitk.GetArrayFromImage(resample_to(volume, lax_labels, labels=True))[0]
        on_plane = np.where(coverage_mask(volume, lax_labels)[0], on_plane, 0)
        _overlay(fig.add_subplot(grid[1, col]), lax, on_plane, f"{name} on LAX")
    ax = fig.add_subplot(grid[2, :])
    ax.axis("off")
    names = list(MR_LABELS.values())
    cells = [[("n/a" if row.get(n) is None else f"{row[n]:.3f}") for n in names] for row in table.values()]
    t = ax.table(cellText=cells, rowLabels=list(table), colLabels=[f"Dice {n}" for n in names], loc="center")
    t.scale(1, 1.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
