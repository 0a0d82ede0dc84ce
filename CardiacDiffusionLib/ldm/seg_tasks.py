"""``train ctseg``: masked-image SSL on CT images, then an 8-label 3D segmentation net fine-tuned on real + synthetic pairs.

Data: ``data.real`` (the user's CT pairs) and ``data.synthetic`` (a ``cardiac-diffusion sample --out`` folder), each
a folder of ``<name>_image.<ext>`` (HU) + ``<name>_labels.<ext>`` (0 background, the CT convention 1 LA ... 8 LAA;
a labels.json there, as ``sample`` writes it, must name that convention). Every pair is read and checked before the
first step: ``io.volumes.read_image`` (missing, corrupt, NaN), label values 0..8 and the two files on one grid
here. Each pair is resampled onto a cube of ``size`` voxels at ``spacing_mm`` (LPS axes; centred on the labelled
voxels' bounding box, or on the image's centre), the image linear after Gaussian anti-aliasing, the labels nearest
neighbour (outside: -1000 HU, background), then HU windowed by :func:`.data.hu_to_unit`. A seeded ``val_fraction``
of the real pairs is held out of both stages: per-label Dice (``val_dice_<label>``) in the train log.

Stage ``ssl`` (:class:`SSLTask`): ``ssl.py``'s masking and L2 restore on the synthetic images (``ssl_images:
both``: and the real training images). Stage ``finetune`` (:class:`FinetuneTask`): the encoder of
``model.encoder_from`` (the ssl stage's model; null: from scratch) as ``ssl.transfer_encoder`` copies it, Dice + CE
on the real training pairs mixed with synthetic pairs, a ``synthetic_fraction`` of each epoch's items (0: real only).
Both export the model-store architecture ``ctseg_unet`` (:func:`build_seg_unet`).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import Dataset

from ..errors import InputError, QualityWarning
from ..labels import CT_LABELS
from ..training.config import did_you_mean
from ..training.task import Task, register_task
from .data import HU_WINDOW, augment, hu_to_unit
from .ssl import FEATURES, build_unet, load_encoder, mask_batch, masker

ARCHITECTURE = "ctseg_unet"
N_CLASSES = len(CT_LABELS) + 1  # background + 8 CT labels
AIR_HU = -1000.0
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
CONVENTION = {str(k): v for k, v in CT_LABELS.items()}
CT_HINT = "give the CT convention: 0 background, " + ", ".join(f"{k} {v}" for k, v in CT_LABELS.items())


def build_seg_unet(config: dict) -> nn.Module:
    """Model-store builder of ``ctseg_unet``: ssl.py's BasicUNet (``out_channels``, ``features``); the other keys
    (``input``: the grid it was trained on; ``encoder``: where its encoder came from) say, not build."""
    return build_unet(int(config.get("out_channels", N_CLASSES)), tuple(config.get("features", FEATURES)))


@dataclass
class CTSegData:
    """The ``data`` section of both stages (the same keys: ``data.real=DIR`` given once serves both)."""

    real: str | None = None
    synthetic: str | None = None
    size: int = 32
    spacing_mm: float = 5.0
    centre: str = "labels"  # labels | image
    val_fraction: float = 0.25
    split_seed: int = 0
    synthetic_fraction: float = 0.5  # finetune: share of each epoch's items that are synthetic pairs
    ssl_images: str = "synthetic"  # ssl: synthetic | both
    augment: bool = True
    flips: bool = False  # augment's left-right (x) and antero-posterior (y) mirrors, p 0.2 each (LA/RA, LV/RV: off)
    root: str | None = None  # --data: refused, said how to give the folders

    def check(self, stage: str) -> None:
        """Refuse what cannot train: stage ``ssl`` reads the synthetic images, ``finetune`` them when mixed in."""
        if self.root is not None:
            raise InputError("--data (config data.root): train ctseg reads data.real=DIR (your CT image/label pairs) "
                             "and data.synthetic=DIR (a `cardiac-diffusion sample --out` folder); give those instead")  # fmt: skip
        if not self.real:
            raise InputError("config data.real: not given; give the folder of your CT image/label pairs: data.real=DIR")
        if (stage == "ssl" or self.synthetic_fraction > 0) and not self.synthetic:
            raise InputError("config data.synthetic: not given; give a `cardiac-diffusion sample --out` folder: "
                             "data.synthetic=DIR (or fine-tune on real pairs only: --stage finetune "
                             "finetune:model.encoder_from=null finetune:data.synthetic_fraction=0)")  # fmt: skip
        if self.size < 32 or self.size % 16:
            raise InputError(f"config data.size: {self.size}; the UNet halves it 4 times: give a multiple of 16, at "
                             "least 32 (e.g. 32)")  # fmt: skip
        if not (math.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise InputError(f"config data.spacing_mm: {self.spacing_mm}; give a voxel size in mm > 0, e.g. 5")
        for key, allowed in (("centre", ("labels", "image")), ("ssl_images", ("synthetic", "both"))):
            if getattr(self, key) not in allowed:
                raise InputError(f"config data.{key}: {getattr(self, key)!r}; use one of {', '.join(allowed)}")
        for key in ("val_fraction", "synthetic_fraction"):
            if not 0 <= getattr(self, key) < 1:
                raise InputError(f"config data.{key}: {getattr(self, key)}; give a fraction in [0, 1)")

    def grid(self) -> dict:
        """What the exported model was trained on (stored in its config)."""
        return {"size": self.size, "spacing_mm": self.spacing_mm, "centre": self.centre, "hu_window": list(HU_WINDOW),
                "labels": CONVENTION}  # fmt: skip


# -- reading
def find_pairs(folder: str, key: str) -> list[tuple[str, Path, Path]]:
    """``(name, image, labels)`` of every pair in ``folder`` (``data.<key>``); its labels.json checked."""
    where, path = f"data.{key} {folder}", Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(f"{where}: {'not a folder' if path.exists() else 'no such folder'}; give the folder holding "
                         "<name>_image.nii.gz + <name>_labels.nii.gz pairs")  # fmt: skip
    _check_labels_json(path / "labels.json")
    found: dict[str, dict[str, Path]] = {"image": {}, "labels": {}}
    for file in sorted(path.iterdir()):
        for role in found:
            suffix = next((s for s in SUFFIXES if file.name.endswith(f"_{role}{s}")), None)
            if suffix and not file.name.startswith("."):  # .partial_* of an interrupted `sample`
                found[role][file.name[: -len(f"_{role}{suffix}")]] = file
    for role, other in (("image", "labels"), ("labels", "image")):
        lone = sorted(set(found[role]) - set(found[other]))
        if lone:
            raise InputError(f"{where}: {found[role][lone[0]].name} has no {other} file ({lone[0]}_{other}.nii.gz); "
                             f"add it or move the file out")  # fmt: skip
    if not found["image"]:
        raise InputError(f"{where}: no image/label pairs (<name>_image.nii.gz + <name>_labels.nii.gz; also .nii, "
                         ".nrrd, .mha); give the folder that holds them")  # fmt: skip
    return [(name, found["image"][name], found["labels"][name]) for name in sorted(found["image"])]


def _check_labels_json(file: Path) -> None:
    if not file.is_file():
        return
    try:
        names = json.loads(file.read_text())["labels"]
        names = {str(k): str(v) for k, v in names.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        raise InputError(f"{file}: not a readable labels.json with a \"labels\" map (as `sample` writes it); fix or "
                         "remove it") from None  # fmt: skip
    if names != CONVENTION:
        raise InputError(f"{file}: its label convention {names} is not this workflow's CT convention {CONVENTION}; "
                         "relabel the pairs to it")  # fmt: skip


def load_pair(image_path: Path, labels_path: Path, data: CTSegData, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(HU float32, labels uint8), both (size,) * 3 on the model's grid."""
    import SimpleITK as sitk

    from ..geometry.stack import same_grid
    from ..io.volumes import read_image
    from ..labels import check_label_values

    image = read_image(image_path, name=f"data.{key} image")
    labels = read_image(labels_path, name=f"data.{key} labels")
    if not same_grid(image, labels, tol=1e-3):
        raise InputError(f"data.{key} labels {labels_path}: not on the grid of {image_path.name} (size "
                         f"{labels.GetSize()} vs {image.GetSize()}, spacing {_mm(labels.GetSpacing())} vs "
                         f"{_mm(image.GetSpacing())}, origin {_mm(labels.GetOrigin())} vs {_mm(image.GetOrigin())}); "
                         "resample the labels onto the image (nearest neighbour)")  # fmt: skip
    lab = sitk.GetArrayFromImage(labels)
    check_label_values(lab, range(N_CLASSES), name=f"data.{key} labels {labels_path}", hint=CT_HINT)
    if not lab.any():
        raise InputError(f"data.{key} labels {labels_path}: no labelled voxel; give labels of the heart ({CT_HINT})")
    ref = reference_grid(image, data, lab)
    out = sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return resample_hu(image, ref), sitk.GetArrayFromImage(out)


def resample_hu(image, ref) -> np.ndarray:
    """HU of ``image`` on the cube ``ref`` (float32, (z, y, x)): linear after Gaussian anti-aliasing (sigma (target -
    source spacing) / 2 per axis, scikit-image's), -1000 HU outside. Training (:func:`load_pair`) and ``segment``."""
    import SimpleITK as sitk

    source = sitk.Cast(image, sitk.sitkFloat32)
    variance = [max(0.0, (ref.GetSpacing()[0] - s) / 2) ** 2 for s in image.GetSpacing()]
    if max(variance) > 0:
        source = sitk.DiscreteGaussian(source, variance, 32, 0.01, True)
    hu = sitk.Resample(source, ref, sitk.Transform(), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(hu)


def _mm(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def label_centre(lab: np.ndarray) -> list[float] | None:
    """The continuous (x, y, z) index of the centre of the labelled voxels' bounding box ((z, y, x) array); None
    when none is labelled."""
    if not lab.any():
        return None
    z, y, x = (np.flatnonzero(lab.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3))
    return [float(v.min() + v.max()) / 2 for v in (x, y, z)]


def reference_grid(image, data: CTSegData, lab: np.ndarray | None = None, centre_mm=None):
    """The cube a CT is resampled onto: ``data.size`` voxels of ``data.spacing_mm``, LPS axes, centred on
    ``centre_mm`` (LPS) when given, else on the labels' bounding box (``data.centre`` labels) or the image's centre;
    snapped onto the image's voxels when it has LPS axes at that spacing. Training (:func:`load_pair`) and
    ``segment``."""
    import SimpleITK as sitk

    if centre_mm is None:
        index = label_centre(lab) if data.centre == "labels" else [(n - 1) / 2 for n in image.GetSize()]
        centre_mm = image.TransformContinuousIndexToPhysicalPoint(index)
    n, s = data.size, data.spacing_mm
    origin = np.array(centre_mm, float) - (n - 1) / 2 * s
    if np.allclose(image.GetDirection(), np.eye(3).ravel()) and np.allclose(image.GetSpacing(), s, rtol=1e-4):
        origin = image.GetOrigin() + np.round((origin - image.GetOrigin()) / s) * s  # on its voxels: no interpolation
    ref = sitk.Image([n] * 3, sitk.sitkFloat32)
    ref.SetSpacing([s] * 3)
    ref.SetOrigin([float(v) for v in origin])
    return ref


@dataclass
class Pairs:
    names: list[str]
    hu: list[np.ndarray]
    labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index) -> Pairs:
        return Pairs([self.names[i] for i in index], [self.hu[i] for i in index], [self.labels[i] for i in index])


def read_folder(data: CTSegData, key: str) -> Pairs:
    """Every pair of ``data.<key>`` on the model's grid, checked; refused before reading when they would not fit."""
    from ..utils.device import available_memory

    found = find_pairs(getattr(data, key), key)
    need, free = len(found) * data.size**3 * 5, available_memory()
    if free is not None and need > free / 2:
        raise InputError(f"config data.size {data.size}: {len(found)} pairs of data.{key} at {data.size}^3 need "
                         f"{need / 2**30:.1f} GiB, more than half the {free / 2**30:.1f} GiB available; give a smaller "
                         "data.size or fewer pairs")  # fmt: skip
    pairs = Pairs([], [], [])
    for name, image, labels in found:
        hu, lab = load_pair(image, labels, data, key)
        pairs.names.append(name)
        pairs.hu.append(hu)
        pairs.labels.append(lab)
    return pairs


def split_real(data: CTSegData) -> tuple[Pairs, Pairs]:
    """(training, held-out) real pairs: a seeded ``val_fraction`` (>= 1 pair when >= 2 pairs and a fraction > 0)."""
    real = read_folder(data, "real")
    n_val = 0
    if data.val_fraction > 0 and len(real) >= 2:
        n_val = min(len(real) - 1, max(1, round(data.val_fraction * len(real))))
    elif data.val_fraction > 0:
        warnings.warn(QualityWarning(f"data.real {data.real}: one pair, none held out for validation"), stacklevel=2)
    order = np.random.default_rng(data.split_seed).permutation(len(real))
    return real.subset(sorted(order[n_val:])), real.subset(sorted(order[:n_val]))


def _item(hu: np.ndarray, lab: np.ndarray, augmented: bool, flips: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    if augmented:  # ldm/data.py's augmentations, drawn from numpy's global generator (the runner seeds it); without
        hu, lab = augment(hu, lab) if flips else augment(hu, lab, p_flip=0.0)  # flips: the same draws, none mirrored
    return torch.from_numpy(hu_to_unit(hu))[None].float(), torch.from_numpy(lab.astype(np.int64))


class ImageSet(Dataset):
    """SSL items ``{"image": (1, n, n, n)}`` in [-1, 1]."""

    def __init__(self, pairs: Pairs, augmented: bool, flips: bool = False):
        self.pairs, self.augmented, self.flips = pairs, augmented, flips

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        return {"image": _item(self.pairs.hu[i], self.pairs.labels[i], self.augmented, self.flips)[0]}


class MixedPairs(Dataset):
    """An epoch: every real pair once and ``round(R f / (1 - f))`` synthetic items (at least 1 when f > 0), each a
    synthetic pair drawn at random: a share ``f`` of the items synthetic. Items ``{"image", "labels", "synthetic"}``."""

    def __init__(self, real: Pairs, synthetic: Pairs | None, fraction: float, augmented: bool, flips: bool = False):
        self.real, self.synthetic, self.augmented, self.flips = real, synthetic, augmented, flips
        self.n_synthetic = max(1, round(len(real) * fraction / (1 - fraction))) if fraction > 0 else 0

    def __len__(self) -> int:
        return len(self.real) + self.n_synthetic

    def __getitem__(self, i: int) -> dict:
        pairs, j = (self.real, i) if i < len(self.real) else (self.synthetic, np.random.randint(len(self.synthetic)))
        image, labels = _item(pairs.hu[j], pairs.labels[j], self.augmented, self.flips)
        return {"image": image, "labels": labels, "synthetic": torch.tensor(float(i >= len(self.real)))}


# -- tasks
class _CTSegTask(Task):
    architecture = ARCHITECTURE
    data_signature = CTSegData
    model_signature: dict = {"features": list(FEATURES)}
    out_channels = N_CLASSES

    def build_model(self, config: dict) -> nn.Module:
        for key in config:
            if key not in self.model_signature:
                raise InputError(f"config model.{key}: not a setting of this stage's model"
                                 f"{did_you_mean(str(key), self.model_signature, 'model')}; known keys are "
                                 f"{sorted(self.model_signature)}")  # fmt: skip
        features = config.get("features", list(FEATURES))
        if len(features) != 6 or any(int(f) < 1 for f in features):
            raise InputError(f"config model.features: {features}; give 6 channel counts >= 1, e.g. {list(FEATURES)}")
        self.features, self.encoder = [int(f) for f in features], None
        return build_unet(self.out_channels, self.features)

    def _settings(self, config: dict, stage: str) -> CTSegData:
        data = CTSegData(**config)  # an unknown key: TypeError, which the runner names as a config error
        data.check(stage)
        self.data, self.grid = data, data.grid()
        return data

    def _held_out(self, val: Pairs) -> None:
        self.val_x = [_item(h, y, False)[0] for h, y in zip(val.hu, val.labels)]
        self.val_y = [torch.from_numpy(y.astype(np.int64)) for y in val.labels]

    def model_config(self, config: dict) -> dict:
        out = {"out_channels": self.out_channels, "features": self.features, "input": self.grid}
        return {**out, "encoder": self.encoder} if self.encoder else out


class SSLTask(_CTSegTask):
    """Stage ``ssl``: restore masked images (L2), ``ssl.masker``'s cubes drawn from the runner-seeded generator."""

    out_channels = 1

    def build_dataset(self, config: dict) -> Dataset:
        data = self._settings(config, "ssl")
        train, val = split_real(data)  # read and checked here too: the finetune stage's data is refused before any step
        synthetic = read_folder(data, "synthetic")
        images = synthetic if data.ssl_images == "synthetic" else Pairs(
            synthetic.names + train.names, synthetic.hu + train.hu, synthetic.labels + train.labels)  # fmt: skip
        self._held_out(val)
        self.mask = masker(data.size)
        return ImageSet(images, data.augment, data.flips)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        self.mask.set_random_state(seed=int(np.random.randint(2**31)))  # a resumed run draws the same masks
        target = batch["image"]
        return F.mse_loss(model(mask_batch(target, self.mask)), target)

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if not self.val_x:
            return {}
        device, mask = next(model.parameters()).device, masker(self.data.size, seed=0)  # the same masks every time
        target = torch.stack(self.val_x).to(device)
        return {"val_restore_mse": float(F.mse_loss(model(mask_batch(target, mask)), target))}


class FinetuneTask(_CTSegTask):
    """Stage ``finetune``: Dice + CE on real + synthetic pairs, the encoder from ``model.encoder_from``."""

    model_signature = {"features": list(FEATURES), "encoder_from": None}

    def build_model(self, config: dict) -> nn.Module:
        net = super().build_model(config)
        source = config.get("encoder_from")
        if not source:
            return net
        if str(source).endswith(".safetensors") and not Path(source).is_file():
            raise InputError(f"config model.encoder_from {source}: not found; train stage ssl first (`train ctseg` "
                             "runs both stages), or skip SSL: --stage finetune finetune:model.encoder_from=null")  # fmt: skip
        from ..models.store import load_model

        loaded = load_model(source)
        if loaded.architecture != ARCHITECTURE:
            raise InputError(f"config model.encoder_from {source}: a {loaded.architecture} model; give the ssl "
                             f"stage's {ARCHITECTURE} model")  # fmt: skip
        try:
            missing = load_encoder(net, loaded.module)
        except RuntimeError as error:
            missing = [str(error).strip().splitlines()[-1].strip()[:160]]
        if missing:
            raise InputError(f"config model.encoder_from {source}: its encoder does not fit model.features "
                             f"{self.features} ({missing[0]}); give both stages the same model.features")  # fmt: skip
        self.encoder = {"from": str(source), "sha256": loaded.sha256}
        return net

    def build_dataset(self, config: dict) -> Dataset:
        data = self._settings(config, "finetune")
        train, val = split_real(data)
        synthetic = read_folder(data, "synthetic") if data.synthetic_fraction > 0 else None
        self._held_out(val)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        return MixedPairs(train, synthetic, data.synthetic_fraction, data.augment, data.flips)

    def loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        loss = self.loss_fn(model(batch["image"]), batch["labels"][:, None])
        return {"loss": loss, "synthetic_share": batch["synthetic"].mean()}

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Per-label Dice on the held-out real pairs (mean over the pairs where the label is in either; NaN, logged
        null, where in none) and their mean."""
        from ..metrics import dice

        if not self.val_x:
            return {}
        device = next(model.parameters()).device
        pred = [model(x[None].to(device)).argmax(1)[0].cpu().numpy() for x in self.val_x]
        out = {}
        for k, name in CT_LABELS.items():
            values = [d for p, y in zip(pred, self.val_y) if math.isfinite(d := dice(p == k, y.numpy() == k))]
            out[f"val_dice_{name}"] = float(np.mean(values)) if values else float("nan")
        defined = [v for v in out.values() if math.isfinite(v)]
        out["val_dice_mean"] = float(np.mean(defined)) if defined else float("nan")
        return out


register_task("ctseg_ssl", SSLTask)
register_task("ctseg_finetune", FinetuneTask)
