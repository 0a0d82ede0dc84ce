"""ACDC cine SAX stacks in the WSL4MIS HDF5 layout (``patientNNN_frameFF.h5``).

Each file holds ``image`` (slices, H, W) float32 scaled to [0, 1], ``label`` (ACDC convention
1 RV, 2 MYO, 3 LV) and ``scribble``. The files store **no spacing or orientation**: a stack gets
the spacing you pass, or :data:`NOMINAL_SPACING` marked as unknown (``meta["spacing_known"] = False``
plus a warning) so millimetre results can be flagged as nominal.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..geometry.stack import SliceStack
from ..labels import convert_labels

#: (in-plane mm, slice gap mm) used when none is given: mid-range of ACDC's 1.37-1.68 mm pixels;
#: 10 mm is the most common slice spacing (the range is 5-10 mm)
NOMINAL_SPACING = (1.5, 10.0)
#: the ACDC training patients to keep out of training, for validation
VALIDATION_PATIENTS = range(61, 81)

_NAME = re.compile(r"patient(\d+)_frame(\d+)\.h5$")
#: what to do about unknown label values: HDF5 files are always read as ACDC, so no --label-convention helps
_LABEL_HINT = "ACDC HDF5 labels are 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity; fix the 'label' dataset"


def list_acdc(folder) -> list[tuple[int, int, Path]]:
    """``(patient id, frame, path)`` of every ``patientNNN_frameFF.h5`` in ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"ACDC folder: file not found: {folder}")
    entries = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            entries.append((int(match.group(1)), int(match.group(2)), path))
    if not entries:
        raise InputError(f"ACDC folder: no patientNNN_frameFF.h5 files in {folder}")
    return sorted(entries)


def acdc_split(folder, val_patients=VALIDATION_PATIENTS) -> tuple[list, list]:
    """(training, validation) entries of :func:`list_acdc`; ``val_patients`` (default 061-080) never train."""
    held_out = set(int(p) for p in val_patients)
    entries = list_acdc(folder)
    return [e for e in entries if e[0] not in held_out], [e for e in entries if e[0] in held_out]


def read_acdc(
    path, spacing: tuple[float, float] | None = None, name: str | None = None, labels: bool = True
) -> SliceStack:
    """One ACDC file as an axis-aligned :class:`SliceStack`, labels in the project convention.

    ``spacing = (in-plane mm, slice gap mm)``; without it :data:`NOMINAL_SPACING` is used and the stack
    is marked ``meta["spacing_known"] = False`` with a warning in ``meta["warnings"]``. The files store no
    orientation either: identity directions, with a warning that sides are not reliable.
    """
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise InputError(f"{name}: file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise InputError(f"{name}: {path} has no {' or '.join(missing)} dataset; is it an ACDC HDF5 file?")
            for key in ("image", "label") if labels else ("image",):
                if not isinstance(f[key], h5py.Dataset) or f[key].dtype.kind not in "biuf":
                    raise InputError(f"{name}: {path}'s {key!r} entry is not a numeric array; is it an ACDC HDF5 file?")
            image = np.asarray(f["image"][()], dtype=np.float32)
            label = np.asarray(f["label"][()]) if labels else None
    except OSError as error:
        raise InputError(f"{name}: cannot read {path} as HDF5 ({error})") from None
    if image.ndim != 3 or (label is not None and label.shape != image.shape):
        raise InputError(f"{name}: expected image and label shaped (slices, H, W), got {image.shape}")
    if not np.all(np.isfinite(image)):
        raise InputError(f"{name}: {path} holds NaN or infinite intensities")
    known = spacing is not None
    in_plane, gap = (float(v) for v in (spacing if known else NOMINAL_SPACING))
    if not (0 < in_plane < np.inf and 0 < gap < np.inf):  # also refuses NaN
        raise InputError(
            f"{name}: the spacing (--h5-spacing IN_PLANE GAP, mm) must be positive and finite, got {spacing}"
        )
    warnings = [] if known else [
        f"{name}: ACDC HDF5 files store no spacing; nominal {in_plane} mm pixels and {gap} mm slice gap "
        "assumed, so millimetre values are approximate"
    ]
    # the anatomy in these arrays (chest wall beside the RV, abdomen below, base slice first) is the mirror of
    # a true-geometry stack so described (docs/models/dmcvr.md, Limits): sizes hold, sides do not
    warnings.append(
        f"{name}: ACDC HDF5 files store no orientation; identity directions assumed, which most likely show the "
        "patient's mirror image: left/right-dependent results (anterior vs inferior AHA segments) are not reliable"
    )
    match = _NAME.search(path.name)
    n = len(image)
    return SliceStack(
        pixels=image,
        origins=np.stack([np.zeros(n), np.zeros(n), np.arange(n) * gap], axis=1),
        row_dir=(1.0, 0.0, 0.0),
        col_dir=(0.0, 1.0, 0.0),
        pixel_spacing=(in_plane, in_plane),
        labels=None if label is None else convert_labels(label, "acdc", "project", f"{name} label", _LABEL_HINT),
        thickness=gap,
        source=name,
        meta={
            "path": str(path),
            "patient": int(match.group(1)) if match else None,
            "frame": int(match.group(2)) if match else None,
            "spacing_known": known,
            "orientation_known": False,
            "warnings": warnings,
        },
    )
