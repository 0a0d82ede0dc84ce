"""Training data of DMCVR: 2D SAX slices (+ labels 1 LV, 2 MYO, 3 RV) with the training treatment.

The treatment, shared by training and inference (:mod:`.reconstruction`):

* intensities: per volume, clip at the 99th percentile and min-max scale to [0, 1] (the shared
  ACDC files are stored so already; applying it again is harmless);
* geometry: a square crop of ``size`` pixels of ``spacing_mm`` around the heart, sampled directly
  from the acquired grid (one bilinear resampling, :class:`CropFrame`), so the in-plane
  resampling and the crop are one exactly invertible coordinate map.

Items are sampled on the fly with light augmentation (small rotation, scale and shift of the
crop, gamma). Randomness comes from numpy's global generator, which the training runner seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from ..errors import InputError
from ..utils.jsonfile import dumps

#: default training grid: 64 x 64 pixels of 2.25 mm (144 mm around the heart: fits ~97% of ACDC slices)
TRAIN_SIZE = 64
TRAIN_SPACING_MM = 2.25
CLIP_PERCENTILE = 99.0


def normalise_volume(pixels: np.ndarray, percentile: float = CLIP_PERCENTILE) -> np.ndarray:
    """Clip a volume at its ``percentile`` and min-max scale it to [0, 1] (float32)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if not np.all(np.isfinite(pixels)):
        raise InputError("SAX stack: holds NaN or infinite intensities; fix or mask them first")
    hi = float(np.percentile(pixels, percentile))
    clipped = np.minimum(pixels, hi)
    lo = float(clipped.min())
    if hi - lo <= 1e-8:
        raise InputError("SAX stack: the image is constant; nothing to reconstruct")
    return (clipped - lo) / (hi - lo)


def label_center(labels: np.ndarray) -> tuple[float, float] | None:
    """(row, col) of the centre of the bounding box of all labelled pixels of a volume; None if unlabelled."""
    fg = np.asarray(labels) > 0
    if not fg.any():
        return None
    rows = np.nonzero(fg.any(axis=(0, 2)))[0]
    cols = np.nonzero(fg.any(axis=(0, 1)))[0]
    return (rows[0] + rows[-1]) / 2.0, (cols[0] + cols[-1]) / 2.0


@dataclass
class CropFrame:
    """A ``size`` x ``size`` grid of ``spacing_mm`` pixels centred at ``center`` (row, col) of the acquired grid.

    ``pixel_spacing`` is the acquired grid's (x = along columns, y = along rows) spacing in mm.
    ``angle`` (radians) and ``scale`` rotate and zoom the crop (augmentation; 0 and 1 at inference).
    """

    center: tuple[float, float]
    pixel_spacing: tuple[float, float]
    size: int = TRAIN_SIZE
    spacing_mm: float = TRAIN_SPACING_MM
    angle: float = 0.0
    scale: float = 1.0

    def _coords(self) -> np.ndarray:
        """Acquired-grid (row, col) coordinates of every crop pixel, shape (2, size, size)."""
        k = (np.arange(self.size) - (self.size - 1) / 2.0) * self.spacing_mm * self.scale  # mm from centre
        dy, dx = np.meshgrid(k, k, indexing="ij")
        c, s = np.cos(self.angle), np.sin(self.angle)
        ry, rx = c * dy - s * dx, s * dy + c * dx
        return np.stack([self.center[0] + ry / self.pixel_spacing[1], self.center[1] + rx / self.pixel_spacing[0]])

    def sample(self, image: np.ndarray, order: int = 1) -> np.ndarray:
        """A 2D image (or labels with ``order=0``) of the acquired grid on the crop; outside is 0."""
        return ndimage.map_coordinates(image, self._coords(), order=order, mode="constant", cval=0.0)

    def sample_stack(self, stack: np.ndarray, order: int = 1) -> np.ndarray:
        coords = self._coords()
        return np.stack([ndimage.map_coordinates(s, coords, order=order, mode="constant", cval=0.0) for s in stack])

    def back(self, crop: np.ndarray, shape: tuple[int, int], order: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """A crop image (size, size) on the acquired grid ``shape``, and the mask of pixels the crop covers.

        For unscaled frames (inference), rotated or not: the inverse of :meth:`_coords`.
        """
        ry = (np.arange(shape[0]) - self.center[0]) * self.pixel_spacing[1]  # mm from the centre
        rx = (np.arange(shape[1]) - self.center[1]) * self.pixel_spacing[0]
        ry, rx = np.meshgrid(ry, rx, indexing="ij")
        c, s = np.cos(self.angle), np.sin(self.angle)
        rr = (c * ry + s * rx) / self.spacing_mm + (self.size - 1) / 2
        cc = (c * rx - s * ry) / self.spacing_mm + (self.size - 1) / 2
        inside = (rr >= 0) & (rr <= self.size - 1) & (cc >= 0) & (cc <= self.size - 1)
        values = ndimage.map_coordinates(crop, np.stack([rr, cc]), order=order, mode="nearest")
        return values, inside


#: Direction of the RV cavity's centroid seen from the LV's (cavity + wall) in the training slices,
#: atan2(row mm, column mm), and how far the training data spread around it: ACDC around 170 deg (circular
#: mean over its 160 volumes 169.9 deg, 99 % within 66 deg, max 70), the MR phantoms around 0 deg (-2..3
#: deg, 30 checked); training turns crops by +-5 deg only. A stack within a pose's spread (as wide as the
#: training data's) keeps its description; any other is turned to the first pose, the one real images had.
RV_POSES_DEG = ((170.0, 70.0), (0.0, 15.0))


def rv_angle(labels: np.ndarray, pixel_spacing) -> float | None:
    """Angle (rad) of the RV cavity's centroid seen from the LV's over a label stack (n, rows, cols),
    atan2(row mm, column mm); None without both."""
    lv, rv = np.argwhere(np.isin(labels, (1, 2))), np.argwhere(labels == 3)
    if len(lv) == 0 or len(rv) == 0:
        return None
    d = (rv[:, 1:].mean(0) - lv[:, 1:].mean(0)) * (pixel_spacing[1], pixel_spacing[0])
    return float(np.arctan2(d[0], d[1]))


def crop_angle(labels: np.ndarray, pixel_spacing) -> float:
    """CropFrame angle (rad) that turns the stack's RV direction to the real training images' pose
    (RV_POSES_DEG) when it lies outside every pose's spread; 0 otherwise (or without an RV)."""
    angle = rv_angle(labels, pixel_spacing)
    if angle is None:
        return 0.0
    turns = [((np.deg2rad(pose) - angle + np.pi) % (2 * np.pi) - np.pi, np.deg2rad(spread)) for pose, spread in RV_POSES_DEG]
    return 0.0 if any(abs(turn) <= spread for turn, spread in turns) else float(turns[0][0])


@dataclass
class Volume:
    pixels: np.ndarray  # (n, H, W) in [0, 1]
    labels: np.ndarray  # (n, H, W) project labels
    pixel_spacing: tuple[float, float]
    center: tuple[float, float]
    source: str


def acdc_volumes(
    root: str | Path, patients: Sequence[int] | None = None, spacing_mm: float | None = None, limit: int | None = None
) -> list[Volume]:
    """ACDC volumes (both frames) of ``patients`` (default: all but the validation patients 061-080), at most ``limit``."""
    from ..io.acdc import acdc_split, list_acdc, read_acdc

    entries = acdc_split(root)[0] if patients is None else [e for e in list_acdc(root) if e[0] in set(patients)]
    out = []
    for _, _, path in entries[:limit]:
        stack = read_acdc(path, None if spacing_mm is None else (spacing_mm, 10.0))
        center = label_center(stack.labels)
        if center is None:
            continue
        out.append(Volume(normalise_volume(stack.pixels), stack.labels, stack.pixel_spacing, center, stack.source))
    return out


def phantom_volumes(count: int, first_seed: int = 1000) -> list[Volume]:
    """SAX stacks of ``count`` MR phantom subjects (seeds ``first_seed``...), ED and ES, varied noise and gap."""
    from ..phantoms.mr import MRPhantom
    from ..phantoms.scanner import acquire_sax

    out = []
    for seed in range(first_seed, first_seed + count):
        rng = np.random.default_rng(seed)
        for phase in ("ED", "ES"):
            stack = acquire_sax(
                MRPhantom(seed, phase), gap_mm=float(rng.uniform(6, 10)), noise_sigma=float(rng.uniform(0.02, 0.06))
            )
            center = label_center(stack.labels)
            if center is not None:
                out.append(Volume(normalise_volume(stack.pixels), stack.labels, stack.pixel_spacing, center, stack.source))
    return out


def _crop_radius_px(vol: Volume, size: int, spacing_mm: float, rotate_deg: float, scale: float, shift_mm: float) -> int:
    """Pixels around ``vol.center`` that any augmented crop can read (+2 for bilinear and rounding)."""
    turn = np.deg2rad(rotate_deg)
    reach_mm = size * spacing_mm / 2 * (1 + scale) * (abs(np.cos(turn)) + abs(np.sin(turn))) + shift_mm
    return int(np.ceil(reach_mm / min(vol.pixel_spacing))) + 2


def pack_volumes(volumes: Sequence[Volume], path, size: int, spacing_mm: float, rotate_deg: float, scale: float,
                 shift_mm: float) -> Path:  # fmt: skip
    """Write ``volumes`` cropped to what training crops can reach, intensities as float16, to one ``.npz``.

    The pack carries the training set to a GPU server without the raw data or SimpleITK (the
    phantoms need it); a dataset reading it refuses larger augmentation than it was packed for.
    Float16 changes intensities in [0, 1] by at most 2.5e-4.
    """
    arrays: dict[str, np.ndarray] = {}
    for i, vol in enumerate(volumes):
        r = _crop_radius_px(vol, size, spacing_mm, rotate_deg, scale, shift_mm)
        c0, c1 = int(round(vol.center[0])), int(round(vol.center[1]))
        pad = [(0, 0), (r, r), (r, r)]
        window = np.s_[:, c0: c0 + 2 * r + 1, c1: c1 + 2 * r + 1]  # of the padded arrays: c -/+ r of the original
        arrays[f"pixels_{i}"] = np.pad(vol.pixels, pad)[window].astype(np.float16)
        arrays[f"labels_{i}"] = np.pad(vol.labels, pad)[window].astype(np.uint8)
        arrays[f"meta_{i}"] = np.array([vol.center[0] - c0 + r, vol.center[1] - c1 + r, *vol.pixel_spacing])
    limits = {"size": size, "spacing_mm": spacing_mm, "rotate_deg": rotate_deg, "scale": scale, "shift_mm": shift_mm}
    arrays["info"] = np.array(dumps({"limits": limits, "sources": [v.source for v in volumes]}, f"{path} info"))
    path = Path(path)
    np.savez_compressed(path, **arrays)
    return path


def load_packed(path, size: int, spacing_mm: float, aug: dict | None) -> list[Volume]:
    """The volumes of a :func:`pack_volumes` file; refuses crops or augmentation beyond what it holds."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data.packed: file not found: {path}")
    with np.load(path) as f:
        info = json.loads(str(f["info"]))
        limits = info["limits"]
        asked = {"size": size, "spacing_mm": spacing_mm, **(aug or {})}
        over = [k for k, v in asked.items() if k in limits and float(v) > float(limits[k]) + 1e-9]
        if over:
            raise InputError(f"data.packed {path}: packed for {limits}; {', '.join(over)} ask(s) for more. Pack again")
        out = []
        for i, source in enumerate(info["sources"]):
            meta = f[f"meta_{i}"]
            out.append(Volume(f[f"pixels_{i}"].astype(np.float32), f[f"labels_{i}"], (float(meta[2]), float(meta[3])),
                              (float(meta[0]), float(meta[1])), source))  # fmt: skip
    return out


class SaxSliceDataset(Dataset):
    """Map-style dataset of augmented 2D SAX crops: ``{"image": (1, S, S) float in [0, 1], "label": (S, S) long}``.

    ``root``: ACDC-layout HDF5 folder (training patients only: 061-080 never enter) or None;
    ``phantoms``: number of MR phantom subjects (2 phases each); ``labelled_only``: keep only
    slices with a label (segmentation stage); ``augment``: rotation (deg), scale, shift (mm), gamma;
    ``packed``: a :func:`pack_volumes` file read instead of ``root`` and ``phantoms``; ``repeat``: each
    slice that many times per epoch (longer epochs).
    """

    def __init__(
        self,
        root: str | None = None,
        phantoms: int = 0,
        size: int = TRAIN_SIZE,
        spacing_mm: float = TRAIN_SPACING_MM,
        patients: Sequence[int] | None = None,
        labelled_only: bool = False,
        rotate_deg: float = 10.0,
        scale: float = 0.08,
        shift_mm: float = 8.0,
        gamma: float = 0.15,
        augment: bool = True,
        limit: int | None = None,
        phantom_first_seed: int = 1000,
        packed: str | None = None,
        repeat: int = 1,
    ):
        limit = int(limit) if limit else None
        self.size, self.spacing_mm = int(size), float(spacing_mm)
        self.aug = dict(rotate_deg=rotate_deg, scale=scale, shift_mm=shift_mm, gamma=gamma) if augment else None
        if packed:
            volumes = load_packed(packed, self.size, self.spacing_mm, self.aug)
        else:
            volumes = acdc_volumes(root, patients, limit=limit) if root else []
            volumes += phantom_volumes(int(phantoms), phantom_first_seed) if phantoms else []
        volumes = volumes[:limit]
        if not volumes:
            raise InputError("data: no volumes; set data.root to an ACDC-layout folder and/or data.phantoms > 0")
        self.volumes = volumes
        self.items = [
            (v, k) for v, vol in enumerate(volumes) for k in range(len(vol.pixels))
            if not labelled_only or vol.labels[k].any()
        ] * max(1, int(repeat))  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v, k = self.items[i]
        vol = self.volumes[v]
        frame = CropFrame(vol.center, vol.pixel_spacing, self.size, self.spacing_mm)
        gamma = 1.0
        if self.aug:
            a = self.aug
            r = np.random.uniform(-1, 1, size=5)
            frame.angle = np.deg2rad(a["rotate_deg"]) * r[0]
            frame.scale = 1.0 + a["scale"] * r[1]
            frame.center = (
                vol.center[0] + a["shift_mm"] * r[2] / vol.pixel_spacing[1],
                vol.center[1] + a["shift_mm"] * r[3] / vol.pixel_spacing[0],
            )
            gamma = float(np.exp(a["gamma"] * r[4]))
        image = np.clip(frame.sample(vol.pixels[k], order=1), 0.0, 1.0) ** gamma
        label = frame.sample(vol.labels[k], order=0)
        return {
            "image": torch.from_numpy(image.astype(np.float32))[None],
            "label": torch.from_numpy(label.astype(np.int64)),
        }
