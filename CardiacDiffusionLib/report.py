"""A one-page PNG report: SAX slices, a LAX plane with each method's labels, and the Dice table.

Images are shown as stored (first pixel top left, as a DICOM viewer shows them), with the patient directions
of their edges (L/R, A/P, S/I); label colours differ in lightness as well as hue, so that red-green colour-blind
readers tell LV cavity from myocardium.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.textpath import TextPath  # noqa: E402

from .geometry.planes import coverage_mask, resample_to  # noqa: E402
from .geometry.stack import SliceStack  # noqa: E402
from .labels import MR_LABEL_COLORS, MR_LABEL_DESCRIPTIONS, MR_LABELS  # noqa: E402

#: overlay colours: the project's label colours (``labels.MR_LABEL_COLORS``), as Slicer's segments show them
REPORT_LABEL_COLORS = MR_LABEL_COLORS
LABEL_ALPHA = 0.5
LABEL_CMAP = ListedColormap([(0, 0, 0, 0)] + [(*REPORT_LABEL_COLORS[n], LABEL_ALPHA) for n in MR_LABELS.values()])
#: inches per panel column: 9 pt text then reads about 10 px high when the page is shown 800 px wide
PANEL_IN = 2.1
TEXT_PT = 9
FOOTER = "Research software: decision support, not a medical device and not a diagnosis"
_LPS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def direction_letters(vector, share: float = 0.4) -> str:
    """Patient direction letters of an LPS ``vector``, strongest first (``"RA"``): components of at least
    ``share`` of the largest."""
    v = np.asarray(vector, float)
    size = np.abs(v)
    return "".join(_LPS_LETTERS[i][0 if v[i] > 0 else 1] for i in np.argsort(-size) if size[i] >= share * size.max())


def edge_letters(right, down) -> dict[str, str]:
    """Letters of the image's four edges from the LPS directions of increasing column (``right``) and row."""
    right, down = np.asarray(right, float), np.asarray(down, float)
    return {"right": direction_letters(right), "left": direction_letters(-right),
            "bottom": direction_letters(down), "top": direction_letters(-down)}  # fmt: skip


def _overlay(ax, image: np.ndarray, labels: np.ndarray | None, title: str, edges: dict[str, str]) -> None:
    ax.imshow(image, cmap="gray")
    if labels is not None:
        ax.imshow(labels, cmap=LABEL_CMAP, vmin=0, vmax=len(MR_LABELS), interpolation="nearest")
    ax.set_title(title, fontsize=TEXT_PT + 1)
    ax.set_xticks([])
    ax.set_yticks([])
    style = {"transform": ax.transAxes, "fontsize": TEXT_PT, "color": "white", "weight": "bold",
             "bbox": {"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 1.0}}
    for where, (x, y, ha, va) in {"top": (0.5, 0.98, "center", "top"), "bottom": (0.5, 0.02, "center", "bottom"),
                                  "left": (0.02, 0.5, "left", "center"),
                                  "right": (0.98, 0.5, "right", "center")}.items():  # fmt: skip
        ax.text(x, y, edges[where], ha=ha, va=va, gid=f"edge-{where}", **style)


def _image_axes(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    d = np.array(image.GetDirection()).reshape(3, 3)
    return d[:, 0], d[:, 1]


def sax_picks(sax: SliceStack, count: int = 4) -> np.ndarray:
    """Up to ``count`` slices spread over those holding labels (all slices without labels), stored order."""
    holding = np.arange(sax.n) if sax.labels is None else np.nonzero((sax.labels > 0).any(axis=(1, 2)))[0]
    holding = holding if len(holding) else np.arange(sax.n)
    return np.unique(holding[np.linspace(0, len(holding) - 1, min(count, len(holding))).round().astype(int)])


def write_report(
    path: Path,
    sax: SliceStack,
    lax_image: sitk.Image,
    lax_labels: sitk.Image,
    reconstructions: dict[str, sitk.Image],
    table: dict[str, dict[str, float | None]],
    title: str = "CardiacDiffusion",
) -> Path:
    """Write :func:`report_figure` as a PNG (150 dpi: about 1600 px wide with four methods)."""
    fig = report_figure(sax, lax_image, lax_labels, reconstructions, table, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def report_figure(sax: SliceStack, lax_image: sitk.Image, lax_labels: sitk.Image, reconstructions: dict[str, sitk.Image],
                  table: dict[str, dict[str, float | None]], title: str = "CardiacDiffusion"):  # fmt: skip
    """The report figure; ``table`` is ``{row name: {label: dice}}`` on the LAX plane shown."""
    columns = max(4, len(reconstructions) + 1)
    row_in, table_in = PANEL_IN + 0.3, 0.45 + 0.27 * (len(table) + 1)  # image + title; caption + table rows
    top_in, bottom_in = 0.4, 0.5  # title line; two footer lines
    height = 2 * row_in + table_in + top_in + bottom_in
    fig = plt.figure(figsize=(PANEL_IN * columns, height), layout="constrained")
    fig.get_layout_engine().set(rect=(0, bottom_in / height, 1, 1 - (top_in + bottom_in) / height), h_pad=0.02)
    grid = fig.add_gridspec(3, columns, height_ratios=(row_in, row_in, table_in))
    sax_edges = edge_letters(sax.row_dir, sax.col_dir)
    for col, k in enumerate(sax_picks(sax)):
        _overlay(fig.add_subplot(grid[0, col]), sax.pixels[k], sax.labels[k] if sax.labels is not None else None,
                 f"SAX slice {k} (stored 0-{sax.n - 1})", sax_edges)  # fmt: skip
    lax = sitk.GetArrayFromImage(lax_image)[0]
    truth = sitk.GetArrayFromImage(lax_labels)[0]
    lax_edges = edge_letters(*_image_axes(lax_labels))
    _overlay(fig.add_subplot(grid[1, 0]), lax, truth, "LAX labels (reference)", lax_edges)
    for col, (name, volume) in enumerate(reconstructions.items(), start=1):
        on_plane = sitk.GetArrayFromImage(resample_to(volume, lax_labels, labels=True))[0]
        on_plane = np.where(coverage_mask(volume, lax_labels)[0], on_plane, 0)
        _overlay(fig.add_subplot(grid[1, col]), lax, on_plane, f"{name} on the LAX plane", lax_edges)
    ax = fig.add_subplot(grid[2, :])
    ax.axis("off")
    _dice_table(ax, table, (table_in - 0.45) / table_in)
    fig.text(0.01, 1 - 0.08 / height, title, ha="left", va="top", fontsize=13)
    fig.text(0.5, 0.06 / height, f"{FOOTER}.\nEdge letters: patient directions (L/R left/right, A/P anterior/posterior, "
             "S/I superior/inferior); images as stored, first pixel top left.", ha="center", va="bottom",
             fontsize=TEXT_PT, color="0.3", linespacing=1.3)  # fmt: skip
    return fig


def _dice_table(ax, table: dict[str, dict[str, float | None]], height: float) -> None:
    """The Dice table (``height``: its share of ``ax``; its row names reach left of it), its caption above it and
    the label legend on its right."""
    names = list(MR_LABELS.values())
    cells = [[("n/a" if row.get(n) is None else f"{row[n]:.3f}") for n in names] for row in table.values()]
    # the row names are drawn left of the bbox: room for the longest, so that they stay inside the axes
    names_in = max(TextPath((0, 0), str(r), size=10).get_extents().width for r in table) / 72 * 1.25 + 0.15
    left = max(0.22, names_in / ax.figure.get_figwidth())
    t = ax.table(cellText=cells, rowLabels=list(table), colLabels=[f"Dice {MR_LABEL_DESCRIPTIONS[n]}" for n in names],
                 cellLoc="center", bbox=(left, 0.0, 0.77 - left, height))  # fmt: skip
    t.auto_set_font_size(False)
    t.set_fontsize(10)
    ax.text(0.5, 1.0, "Dice of each method's labels against the LAX reference labels on this plane\n"
            "(0 = no overlap, 1 = identical; n/a: label in neither)", ha="center", va="top", fontsize=10,
            linespacing=1.2, transform=ax.transAxes)  # fmt: skip
    on_grey = {n: LABEL_ALPHA * np.array(REPORT_LABEL_COLORS[n]) + (1 - LABEL_ALPHA) * 0.5 for n in names}
    ax.legend(handles=[Patch(facecolor=on_grey[n], edgecolor="0.3", label=MR_LABEL_DESCRIPTIONS[n]) for n in names],
              loc="lower left", bbox_to_anchor=(0.79, 0.0), fontsize=TEXT_PT, title="Labels",
              title_fontsize=TEXT_PT, frameon=False, alignment="left")  # fmt: skip
