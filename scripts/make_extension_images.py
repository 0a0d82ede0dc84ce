"""Regenerate the Extension Manager images: the extension icon and the catalog screenshot.

    python scripts/make_extension_images.py            # both, at the paths CMakeLists.txt links to
    python scripts/make_extension_images.py --only icon

- ``Resources/Icons/CardiacDiffusion.png``: 128x128 RGBA, a stylised short-axis cross-section of the
  ventricles (LV cavity, LV myocardium ring, RV crescent in the project's label colours) emerging
  from noise, as a diffusion model's sampling does.
- ``CardiacDiffusion/ActivationMap/Resources/Icons/ActivationMap.png``: a 17-segment AHA bullseye
  coloured early (septum) to late (lateral wall), as the module's output looks.
- ``CardiacDiffusion/SyntheticData/Resources/Icons/SyntheticData.png``: noise on the left turning into
  a labelled CT heart slice on the right (the CT label colours of ``slicer_adapter.synthetic``).
- ``CardiacDiffusion/Reconstruction/Resources/Icons/Reconstruction.png``: a stack of short-axis slices
  (LV cavity, myocardium, RV) narrowing from base to apex, in the project's label colours.
- ``docs/screenshot.png``: a real run on MR phantom subject 0 (the Lib in this process): SAX slices
  with their labels, the 4ch LAX plane with the labels each method reconstructed, and the LAX Dice
  table (``CardiacDiffusionLib.report.report_figure``), saved with a 256-colour palette (small catalog image).

All label colours come from ``labels.MR_LABEL_COLORS`` and ``slicer_adapter.synthetic.CT_COLORS``, as in Slicer.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, PathPatch  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ICON = ROOT / "Resources" / "Icons" / "CardiacDiffusion.png"
SCREENSHOT = ROOT / "docs" / "screenshot.png"
ACTIVATION_ICON = ROOT / "CardiacDiffusion" / "ActivationMap" / "Resources" / "Icons" / "ActivationMap.png"
SYNTHETIC_ICON = ROOT / "CardiacDiffusion" / "SyntheticData" / "Resources" / "Icons" / "SyntheticData.png"
RECONSTRUCTION_ICON = ROOT / "CardiacDiffusion" / "Reconstruction" / "Resources" / "Icons" / "Reconstruction.png"
ICON_SIZE = 128


def _crescent(centre, outer: float, inner: float, shift: float) -> MplPath:
    """The RV: a disc of radius ``outer`` minus the LV disc (``inner``), ``shift`` to the left."""
    t = np.linspace(0, 2 * np.pi, 181)
    cx, cy = centre
    outside = np.c_[cx - shift + outer * np.cos(t), cy + 0.85 * outer * np.sin(t)]
    hole = np.c_[cx + inner * np.cos(t[::-1]), cy + inner * np.sin(t[::-1])]
    vertices = np.r_[outside, hole]
    codes = np.r_[[MplPath.MOVETO], [MplPath.LINETO] * (len(t) - 1), [MplPath.MOVETO], [MplPath.LINETO] * (len(t) - 1)]
    return MplPath(vertices, codes)


def draw_icon(path: Path = ICON, size: int = ICON_SIZE) -> Path:
    from CardiacDiffusionLib.labels import MR_LABEL_COLORS

    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.patch.set_alpha(0.0)
    # rounded dark tile, as MR images are shown
    ax.add_patch(plt.matplotlib.patches.FancyBboxPatch(
        (0.04, 0.04), 0.92, 0.92, boxstyle="round,pad=0,rounding_size=0.16", color="#1d2330", zorder=0,
    ))  # fmt: skip
    # noise that thins out towards the heart: the reverse diffusion process, read left to right
    rng = np.random.default_rng(7)
    xy = rng.uniform(0.08, 0.92, size=(260, 2))
    keep = np.hypot(xy[:, 0] - 0.58, xy[:, 1] - 0.5) > 0.36
    fade = np.clip(1.0 - xy[keep, 0], 0.15, 0.9)
    ax.scatter(xy[keep, 0], xy[keep, 1], s=2.2, c=[(0.85, 0.88, 0.95, a) for a in fade], linewidths=0, zorder=1)
    centre = (0.58, 0.5)
    rv = MR_LABEL_COLORS["RV"]
    ax.add_patch(PathPatch(_crescent(centre, 0.29, 0.275, 0.19), color=rv, zorder=2))
    ax.add_patch(Circle(centre, 0.27, color=MR_LABEL_COLORS["MYO"], zorder=3))
    ax.add_patch(Circle(centre, 0.165, color=MR_LABEL_COLORS["LV"], zorder=4))
    ax.add_patch(Circle(centre, 0.27, fill=False, lw=1.6, ec=(1, 1, 1, 0.85), zorder=5))
    ax.add_patch(Circle((centre[0] - 0.05, centre[1] + 0.05), 0.045, color=(1, 1, 1, 0.35), zorder=6))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, transparent=True, metadata={"Software": None})
    plt.close(fig)
    return path


def draw_activation_icon(path: Path = ACTIVATION_ICON, size: int = ICON_SIZE) -> Path:
    """The AHA bullseye (rings of 6, 6, 4 segments and the apex), TOS early in the septum, late laterally."""
    from matplotlib.patches import Wedge

    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    cmap = matplotlib.colormaps["viridis"]
    # activation delay by angle: 0 at the septum (left of the plot), 1 at the lateral wall (right)
    delay = lambda angle_deg: 0.5 + 0.5 * np.cos(np.radians(angle_deg))  # noqa: E731
    rings = ((0.62, 0.94, 6, 60.0), (0.36, 0.62, 6, 60.0), (0.14, 0.36, 4, 45.0))
    for inner, outer, count, start in rings:
        span = 360.0 / count
        for k in range(count):
            a0 = start + k * span
            ax.add_patch(Wedge((0, 0), outer, a0, a0 + span, width=outer - inner,
                               fc=cmap(delay(a0 + span / 2)), ec="white", lw=1.2))  # fmt: skip
    ax.add_patch(Circle((0, 0), 0.14, fc=cmap(0.5), ec="white", lw=1.2))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, transparent=True, metadata={"Software": None})
    plt.close(fig)
    return path


def draw_synthetic_icon(path: Path = SYNTHETIC_ICON, size: int = ICON_SIZE) -> Path:
    """A stylised axial CT heart (four chambers, myocardium, aorta) blended from noise, left to right."""
    from matplotlib.colors import ListedColormap

    from CardiacDiffusionLib.labels import CT_LABELS
    from CardiacDiffusionLib.slicer_adapter.synthetic import CT_COLORS

    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    labels = np.zeros((size, size), int)
    value = {name: v for v, name in CT_LABELS.items()}
    ellipse = lambda cx, cy, rx, ry: ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1  # noqa: E731
    labels[ellipse(0.18, 0.05, 0.55, 0.5)] = value["MYO"]
    labels[ellipse(0.22, 0.08, 0.36, 0.33)] = value["LV"]
    labels[ellipse(-0.38, 0.22, 0.32, 0.3)] = value["RV"]
    labels[ellipse(-0.28, -0.42, 0.28, 0.2)] = value["RA"]
    labels[ellipse(0.3, -0.5, 0.3, 0.2)] = value["LA"]
    labels[ellipse(0.0, -0.72, 0.14, 0.14)] = value["AO"]
    noise = np.random.default_rng(3).uniform(0, 1, labels.shape)
    blend = np.clip((x + 0.6) / 1.0, 0, 1)  # 0: pure noise (left) .. 1: clean labels (right)
    shown = np.where(noise < blend, labels, np.where(noise < 0.5 * (1 - blend) + blend, 0, labels[::-1, ::-1]))
    colours = [(0.11, 0.14, 0.19, 1.0)] + [(*CT_COLORS[CT_LABELS[v]], 1.0) for v in range(1, 9)]
    rgba = ListedColormap(colours)(shown)
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    round_mask = ((np.abs(x) - 0.8).clip(0) ** 2 + (np.abs(y) - 0.8).clip(0) ** 2) < 0.2 ** 2
    rgba[..., 3] = np.where(round_mask & (np.abs(x) < 0.98) & (np.abs(y) < 0.98), 1.0, 0.0)
    ax.imshow(rgba, interpolation="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, transparent=True, metadata={"Software": None})
    plt.close(fig)
    return path


def draw_reconstruction_icon(path: Path = RECONSTRUCTION_ICON, size: int = ICON_SIZE) -> Path:
    """Short-axis slices seen from above, base (top) to apex: myocardium ring, LV cavity, RV at the septum's side."""
    from matplotlib.patches import Ellipse

    from CardiacDiffusionLib.labels import MR_LABEL_COLORS as colours

    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    edge = {"ec": (1, 1, 1, 0.9), "lw": 0.8}
    for k in range(5, -1, -1):  # apex first, so each slice nearer the base lies on top
        cx, cy, width = 0.58, 0.84 - 0.13 * k, 0.66 - 0.09 * k
        if k < 4:  # the RV ends above the apex
            rv = Ellipse((cx - 0.36 * width, cy), 0.75 * width, 0.16, fc=colours["RV"], **edge, zorder=3 * (6 - k))
            ax.add_patch(rv)
        ax.add_patch(Ellipse((cx, cy), width, 0.2, fc=colours["MYO"], **edge, zorder=3 * (6 - k) + 1))
        ax.add_patch(Ellipse((cx, cy), 0.58 * width, 0.11, fc=colours["LV"], lw=0, zorder=3 * (6 - k) + 2))
    ax.add_patch(Ellipse((0.58, 0.84 - 0.13 * 6.2), 0.07, 0.035, fc=colours["MYO"], **edge))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, transparent=True, metadata={"Software": None})
    plt.close(fig)
    return path


def save_palette_png(fig, path: Path, colours: int = 256, dpi: int = 150) -> Path:
    """``fig`` as an 8-bit palette PNG (a third of the RGBA file: catalog images stay small), at the report's dpi."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    image = Image.open(buffer).convert("RGB")
    image.quantize(colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)
    return Path(path)


def make_screenshot(path: Path = SCREENSHOT, seed: int = 0, matrix: int = 128, view: str = "4ch") -> dict:
    """Reconstruct phantom ``seed`` with each method (dmcvr: the shipped model, CPU) and write the report figure;
    returns its table."""
    from CardiacDiffusionLib.phantoms.scanner import make_subject
    from CardiacDiffusionLib.reconstruction.lax_check import lax_dice
    from CardiacDiffusionLib.reconstruction.volume import reconstruct
    from CardiacDiffusionLib.report import report_figure

    subject = make_subject(seed=seed, matrix=matrix)
    volumes, table = {}, {}
    for method in ("nearest", "linear", "shape", "dmcvr"):
        labels = reconstruct(subject.sax, method, 1.0, **({"device": "cpu"} if method == "dmcvr" else {})).labels
        volumes[method] = labels
        table[f"{method} ({view})"] = lax_dice(labels, subject.lax_labels[view], view)
    fig = report_figure(
        subject.sax, subject.lax[view], subject.lax_labels[view], volumes, table,
        title=f"CardiacDiffusion: MR phantom {seed}, SAX stack to 1 mm, checked on the {view} LAX plane",
    )  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_palette_png(fig, Path(path))
    plt.close(fig)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("icon", "module-icons", "screenshot"))
    p.add_argument("--icon", type=Path, default=ICON)
    p.add_argument("--screenshot", type=Path, default=SCREENSHOT)
    args = p.parse_args(argv)
    if args.only in (None, "icon"):
        print(f"wrote {draw_icon(args.icon)}")
    if args.only in (None, "module-icons"):
        print(f"wrote {draw_activation_icon()}")
        print(f"wrote {draw_synthetic_icon()}")
        print(f"wrote {draw_reconstruction_icon()}")
    if args.only in (None, "screenshot"):
        table = make_screenshot(args.screenshot)
        print(f"wrote {args.screenshot}: " + "; ".join(f"{k} LV {v['LV']:.3f}" for k, v in table.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
