"""``cardiac-diffusion segment``: a ``ctseg_unet`` model (``train ctseg``'s finetune stage) applied to a CT volume.

The CT is resampled onto the model's cube exactly as training resampled its pairs (``ldm.seg_tasks.reference_grid``
and ``resample_hu``: ``data.size`` voxels of ``data.spacing_mm``, LPS axes, HU windowed by the recorded window), the
net predicts (softmax), and the class probabilities are resampled linearly onto the input's own grid, then argmax:
``labels.nii.gz`` has the input's size, spacing, origin and direction; voxels outside the cube are background.
Centring: training centred the cube on the labels' bounding box (``data.centre`` labels) and there are no labels
here, so ``--centre auto`` starts at the image's centre and moves the cube onto the bounding box of what the net
labelled, until it moves less than a voxel (at most :data:`PASSES` passes): the training rule applied to the net's
own labels (their largest connected part). ``--centre image`` keeps the image's centre, ``--centre X,Y,Z`` a point in LPS mm.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError, QualityWarning, quality_warnings
from .common import add_device_argument, add_progress_argument, json_progress, make_folder, output_folder

OUTPUTS = ("labels.nii.gz", "labels.json")
PASSES = 3  # --centre auto: the first at the image's centre, then re-centred on the net's labels
COMMAND = "segment"  # recorded in labels.json: a later run replaces only this command's outputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="8-label CT segmentation with a `train ctseg` model (ctseg_unet)")
    p.add_argument("--model", required=True, help="a ctseg_unet .safetensors file (train ctseg's "
                   "finetune/model.safetensors) or its registered name")  # fmt: skip
    p.add_argument("--image", required=True, help="CT volume in HU: NIfTI/NRRD/MHA file or a DICOM folder")
    p.add_argument("--centre", default="auto", help="where the model's cube is centred: auto (the image's centre, then "
                   "re-centred on the heart the net finds, as training centred on the labels), image, or X,Y,Z in "
                   "LPS mm (default auto)")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder: labels.nii.gz (the input's grid) and labels.json")
    add_progress_argument(p)
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.volumes import read_image, write_image
    from ..models.store import model_provenance
    from ..utils.device import prepare_device
    from ..utils.jsonfile import write_json

    centre = parse_centre(args.centre)
    out = output_folder(args.out, inputs=[args.image, args.model], writes=OUTPUTS)
    earlier_run(out)
    progress = json_progress(args) or (lambda fraction, message="": None)
    model, data, window = load_ctseg(args.model, prepare_device(args.device))
    image = read_image(args.image, name="--image")
    refuse_label_map(image, args.image)
    refuse_non_ct(image, args.image)
    refuse_thin(image, args.image, data)
    progress(0.1, "read")
    with quality_warnings() as said:
        labels, info = segment(model.module, image, data, window, centre, progress)
    make_folder(out)
    partial = out / f".partial_{OUTPUTS[0]}"
    try:
        write_image(labels, partial)
        partial.replace(out / OUTPUTS[0])
    finally:
        partial.unlink(missing_ok=True)
    from ..labels import CT_LABELS

    write_json(out / OUTPUTS[1], {"command": COMMAND, "labels": {str(k): v for k, v in CT_LABELS.items()},
                                  "background": 0, "spacing_mm": list(image.GetSpacing()), "image": str(args.image),
                                  "model": model_provenance(model), **info, "warnings": said})  # fmt: skip
    progress(1.0, "written")
    for line in said:
        print(f"warning: {line}", file=sys.stderr)
    print(f"segment: wrote {', '.join(OUTPUTS)} to {out}", file=sys.stderr)  # stdout: JSON lines only (--progress)
    return 0


def parse_centre(value: str) -> str | tuple[float, float, float]:
    value = value.strip()  # main.py gives a negative point a leading space
    if value in ("auto", "image"):
        return value
    try:
        point = tuple(float(v) for v in value.split(","))
    except ValueError:
        point = ()
    if len(point) != 3 or not all(np.isfinite(point)):
        raise InputError(f"--centre {value}: give auto, image or a point X,Y,Z in LPS mm (e.g. -10,25,40)")
    return point


def earlier_run(out: Path) -> None:
    """Refuse an --out holding a labels.json that this command did not write (e.g. a `sample` folder's), or a
    labels.nii.gz without one: they are the user's. An earlier `segment` run's two files are replaced."""
    import json

    listing, volume = out / OUTPUTS[1], out / OUTPUTS[0]
    if listing.exists():
        try:
            ours = json.loads(listing.read_text()).get("command") == COMMAND
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise InputError(f"--out {out}: holds a labels.json that `segment` did not write; it is kept: choose a new "
                             "or empty folder")  # fmt: skip
    elif volume.exists():
        raise InputError(f"--out {out}: holds a labels.nii.gz that `segment` did not write (no labels.json of a "
                         "segment run beside it); it is kept: choose a new or empty folder")  # fmt: skip


def load_ctseg(name_or_path: str, device):
    """(the loaded model, its data grid as a ``CTSegData``, its HU window): a finetuned ``ctseg_unet``, hash checked by
    the model store, that records the grid it was trained on; anything else refused, saying what to give."""
    from ..ldm.seg_tasks import ARCHITECTURE, CONVENTION, N_CLASSES, CTSegData
    from ..models.store import load_model

    model = load_model(name_or_path, device)
    where = f"--model {name_or_path}"
    if model.architecture != ARCHITECTURE:
        raise InputError(f"{where}: a {model.architecture} model; segment applies a {ARCHITECTURE} model, as "
                         "`cardiac-diffusion train ctseg` exports it (<run>/finetune/model.safetensors)")  # fmt: skip
    if int(model.config.get("out_channels", N_CLASSES)) != N_CLASSES:
        raise InputError(f"{where}: an image-restoration model ({model.config.get('out_channels')} output channel, "
                         "train ctseg's ssl stage); give the finetune stage's model (<run>/finetune/model.safetensors)")  # fmt: skip
    grid = model.config.get("input")
    missing = [k for k in ("size", "spacing_mm", "centre", "hu_window") if k not in (grid or {})]
    if missing:
        raise InputError(f"{where}: records no {', '.join(missing)} of the grid it was trained on (config input); a "
                         "model from an older `train ctseg`: train it again, the export now records them")  # fmt: skip
    if grid.get("labels", CONVENTION) != CONVENTION:
        raise InputError(f"{where}: labels {grid['labels']}, not the CT convention {CONVENTION}; give a model "
                         "trained on that convention")  # fmt: skip
    try:
        data = CTSegData(size=int(grid["size"]), spacing_mm=float(grid["spacing_mm"]), centre=str(grid["centre"]))
        window = tuple(float(v) for v in grid["hu_window"])
        ok = data.size >= 16 and np.isfinite(data.spacing_mm) and data.spacing_mm > 0 and data.centre in ("labels", "image")
        ok = ok and len(window) == 2 and window[0] < window[1]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{where}: its recorded grid {grid} is damaged; re-export the model")
    return model, data, window


#: a non-negative image of at most this many whole numbers (0 among them) is a label map, not a CT (measured: the
#: shared CT 3773 values, the Sunnybrook MR DICOM 701; a CT without its rescale to HU holds thousands)
LABEL_VALUES_MOST = 128


def refuse_label_map(image, path: str) -> None:
    """A label map or mask given as the CT (whole numbers within 0..8, or at most :data:`LABEL_VALUES_MOST` whole
    numbers >= 0 with 0 among them, e.g. a multi-label map or a mask times 255) is refused, saying so."""
    import SimpleITK as sitk

    from .inspect_input import label_like_values

    values = sitk.GetArrayViewFromImage(image)
    low, high = float(values.min()), float(values.max())
    if low < 0:  # a CT in HU (air) or a z-scored image: not labels
        return
    if high <= 8 and np.array_equal(values, np.round(values)):
        raise InputError(f"--image {path}: holds only the values {low:g}..{high:g} (a label map or mask?); give the "
                         "CT image in Hounsfield units")  # fmt: skip
    coarse = values[tuple(slice(None, None, 2) for _ in values.shape)]  # a quick look first: an image has many values
    if len(np.unique(coarse)) <= LABEL_VALUES_MOST and (found := label_like_values(values, LABEL_VALUES_MOST)):
        raise InputError(f"--image {path}: holds only {len(found)} whole numbers, {low:g}..{high:g} (a label map or "
                         "mask?); give the CT image in Hounsfield units")  # fmt: skip


#: the lowest value a CT in HU reaches at least: air is -1000 HU, lung -900..-500, fat -190..-30, and a heart CT's
#: field of view holds lung or fat. Measured lowest values: the shared real CTs -1064 and -1207, the CT phantoms
#: -793..-905 (also a 60 mm crop inside the heart), `sample`'s pairs -200 (the HU window's floor); an MR image has
#: no negative values (the MR phantom, ACDC, Sunnybrook: 0) or a few (z-scored: about -5)
CT_LOWEST_HU = -100.0


def refuse_non_ct(image, path: str) -> None:
    """An image whose lowest value is above :data:`CT_LOWEST_HU` (an MR image, or a CT not in HU) is refused."""
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(image)
    low, high = float(values.min()), float(values.max())
    if low > CT_LOWEST_HU:
        raise InputError(f"--image {path}: values {low:.4g}..{high:.4g}, no air, lung or fat (a CT in HU reaches "
                         f"{CT_LOWEST_HU:g} HU or less: an MR image, or a CT without its rescale to HU?); give the CT "
                         "image in Hounsfield units")  # fmt: skip


#: an image thinner than this many of the model's voxels along an axis (one slice, a thin slab) is refused
THINNEST = 4


def refuse_thin(image, path: str, data) -> None:
    """A single slice or a slab thinner than :data:`THINNEST` model voxels (20 mm at 5 mm) is refused: the net would
    see a sheet of tissue in a cube of air (-1000 HU) and label it as a whole heart."""
    extent = [n * s for n, s in zip(image.GetSize(), image.GetSpacing())]
    least = THINNEST * data.spacing_mm
    thin = [axis for axis, e in zip("xyz", extent) if e < least]
    if thin:
        size = " x ".join(str(n) for n in image.GetSize())
        what = ("its spacing in m or cm, not mm? give the spacing in mm" if len(thin) == 3 else
                "a single slice or thin slab; give the whole series")  # fmt: skip
        raise InputError(f"--image {path}: {size} voxels spanning {' x '.join(f'{e:g}' for e in extent)} mm, "
                         f"thinner than {least:g} mm along {', '.join(thin)} ({what}); segment labels a 3D CT "
                         "volume holding the heart")  # fmt: skip


def segment(net, image, data, window, centre="auto", progress=None) -> tuple:
    """(labels on ``image``'s grid as a UInt8 sitk image, what labels.json records of the cube and the centring)."""
    import SimpleITK as sitk

    from ..ldm.seg_tasks import label_centre, reference_grid

    progress = progress or (lambda fraction, message="": None)
    if isinstance(centre, tuple):
        point = centre
    else:
        point = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    passes = 1 if centre != "auto" or data.centre == "image" else PASSES
    centres = []
    for i in range(passes):
        ref = reference_grid(image, data, centre_mm=point)
        region = covered_region(ref, image)
        if region is None:
            raise InputError(f"--centre {','.join(f'{v:g}' for v in point)}: the model's {data.size * data.spacing_mm:g} "
                             "mm cube there misses the image; give a point inside it (LPS mm) or --centre auto")  # fmt: skip
        probs = predict(net, image, ref, window)
        centres.append([round(float(v), 3) for v in ref.TransformContinuousIndexToPhysicalPoint([(data.size - 1) / 2] * 3)])
        progress(0.1 + 0.7 * (i + 1) / passes, f"pass {i + 1}: cube centred at {centres[-1]} mm")
        index = label_centre(largest_component(probs.argmax(0) > 0))
        if index is None or i == passes - 1:
            break
        found = ref.TransformContinuousIndexToPhysicalPoint(index)
        if np.linalg.norm(np.subtract(found, centres[-1])) < data.spacing_mm:  # moved by less than a voxel: done
            break
        point = found
    cube = probs.argmax(0)
    if not cube.any():
        warnings.warn(QualityWarning(f"the model labelled no voxel in its cube centred at {centres[-1]} mm; is the "
                                     "heart there? give --centre X,Y,Z (LPS mm) on the heart"), stacklevel=2)  # fmt: skip
    elif any(cube.take(e, axis=a).any() for a in range(3) for e in (0, -1)):
        warnings.warn(QualityWarning(f"labels touch the faces of the model's {data.size * data.spacing_mm:g} mm cube: "
                                     "the heart may reach beyond it (background there); check the labels' edges"),
                      stacklevel=2)  # fmt: skip
    labels = to_input_grid(probs, ref, image, region)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    from ..labels import CT_LABELS

    info = {"grid": {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()),
                     "direction": list(image.GetDirection())},
            "model_grid": {"size": data.size, "spacing_mm": data.spacing_mm, "trained_centre": data.centre,
                           "hu_window": list(window), "origin": list(ref.GetOrigin())},
            "centring": {"option": centre if isinstance(centre, str) else list(centre), "centres_mm": centres},
            "input_voxels_outside_cube": int(labels.size - covered_voxels(ref, image, region)),
            "volumes_ml": {name: round(float(np.sum(labels == k)) * voxel_ml, 3) for k, name in CT_LABELS.items()}}  # fmt: skip
    progress(0.95, "labels on the input grid")
    return out, info


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected part of ``mask``: stray voxels elsewhere would pull the bounding box off the heart."""
    from scipy import ndimage

    parts, n = ndimage.label(mask, np.ones((3, 3, 3)))
    return parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:])) if n > 1 else mask


def predict(net, image, ref, window) -> np.ndarray:
    """Softmax class probabilities (classes, z, y, x) of ``image`` resampled onto the cube ``ref`` as training did."""
    import torch

    from ..ldm.data import hu_to_unit
    from ..ldm.seg_tasks import resample_hu

    x = torch.from_numpy(hu_to_unit(resample_hu(image, ref), window))[None, None].float()
    device = next(net.parameters()).device
    with torch.inference_mode():
        return torch.softmax(net(x.to(device)), 1)[0].float().cpu().numpy()


def covered_region(ref, image) -> list[tuple[int, int]] | None:
    """Per input axis (x, y, z), the index range [a, b) of ``image``'s voxels the cube ``ref`` may reach (its corners
    half a voxel out, one voxel of margin); None when none."""
    n = ref.GetSize()[0]
    corners = [ref.TransformContinuousIndexToPhysicalPoint([c * n - 0.5 for c in (i, j, k)])
               for i in (0, 1) for j in (0, 1) for k in (0, 1)]  # fmt: skip
    index = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in corners])
    low = np.maximum(np.floor(index.min(0)) - 1, 0)  # compared as floats: a far --centre overflows an int cast
    high = np.minimum(np.ceil(index.max(0)) + 2, image.GetSize())
    if not np.all(np.isfinite(index)) or np.any(high <= low):
        return None
    return [(int(a), int(b)) for a, b in zip(low, high)]


def covered_voxels(ref, image, region) -> int:
    """How many of ``image``'s voxels the model's cube ``ref`` reaches, as :func:`to_input_grid` resamples it
    (``region``'s bounding box holds them all, but on an oblique cube also corners it does not reach)."""
    import SimpleITK as sitk

    ones = sitk.Image(ref.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(ref)
    reached = sitk.Resample(ones, _region_grid(image, region), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return int(np.count_nonzero(sitk.GetArrayFromImage(reached) > 0.5))  # 1 inside the cube, 0 outside


def _region_grid(image, region):
    """An empty image on the part ``region`` (index ranges x, y, z) of ``image``'s grid."""
    import SimpleITK as sitk

    start, size = [a for a, _ in region], [b - a for a, b in region]
    target = sitk.Image(size, sitk.sitkUInt8)
    target.SetSpacing(image.GetSpacing())
    target.SetDirection(image.GetDirection())
    target.SetOrigin(image.TransformIndexToPhysicalPoint(start))
    return target


def to_input_grid(probs: np.ndarray, ref, image, region) -> np.ndarray:
    """Labels (z, y, x) on ``image``'s grid: each class's probability resampled linearly from the cube onto the part
    of the grid the cube covers (outside it: background), then argmax; one class at a time (memory)."""
    import SimpleITK as sitk

    target = _region_grid(image, region)
    best = label = None
    for k, p in enumerate(probs):
        source = sitk.GetImageFromArray(p)
        source.CopyInformation(ref)
        on = sitk.GetArrayFromImage(sitk.Resample(source, target, sitk.Transform(), sitk.sitkLinear,
                                                  1.0 if k == 0 else 0.0, sitk.sitkFloat32))  # fmt: skip
        if best is None:
            best, label = on, np.zeros(on.shape, np.uint8)
        else:
            better = on > best
            best[better], label[better] = on[better], k
    out = np.zeros(image.GetSize()[::-1], np.uint8)
    (x0, x1), (y0, y1), (z0, z1) = region
    out[z0:z1, y0:y1, x0:x1] = label
    return out
