"""Label conventions. The project's own convention is the M&Ms / UK Biobank one.

Project (M&Ms, UK Biobank): 0 background, 1 LV cavity, 2 LV myocardium, 3 RV cavity.
ACDC: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity.
CT whole heart (this project's CT phantom and LDM): 1 LA, 2 LV, 3 RA, 4 RV, 5 MYO, 6 AO, 7 PA, 8 LAA.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

#: Short names used in tables and JSON, by project label value.
MR_LABELS: dict[int, str] = {1: "LV", 2: "MYO", 3: "RV"}
MR_LABEL_DESCRIPTIONS: dict[str, str] = {
    "LV": "LV cavity",
    "MYO": "LV myocardium",
    "RV": "RV cavity",
}
#: Display colours (RGB 0..1) as Slicer's generic anatomy colours would show them.
MR_LABEL_COLORS: dict[str, tuple[float, float, float]] = {
    "LV": (0.85, 0.20, 0.20),
    "MYO": (0.55, 0.35, 0.20),
    "RV": (0.20, 0.40, 0.85),
}
CT_LABELS: dict[int, str] = {1: "LA", 2: "LV", 3: "RA", 4: "RV", 5: "MYO", 6: "AO", 7: "PA", 8: "LAA"}

#: value in the named convention -> value in the project convention
CONVENTIONS: dict[str, dict[int, int]] = {
    "project": {0: 0, 1: 1, 2: 2, 3: 3},
    "mnms": {0: 0, 1: 1, 2: 2, 3: 3},
    "ukbb": {0: 0, 1: 1, 2: 2, 3: 3},
    "acdc": {0: 0, 1: 3, 2: 2, 3: 1},
}


def convert_labels(labels: np.ndarray, source: str, target: str = "project", name: str = "labels") -> np.ndarray:
    """Map a label array from one convention to another; unknown values raise :class:`InputError`."""
    if source not in CONVENTIONS or target not in CONVENTIONS:
        raise InputError(f"unknown label convention {source!r} or {target!r}; use one of {sorted(CONVENTIONS)}")
    check_label_values(labels, CONVENTIONS[source].keys(), name)
    to_project = CONVENTIONS[source]
    from_project = {v: k for k, v in CONVENTIONS[target].items()}
    lut = np.zeros(max(to_project) + 1, dtype=np.uint8)
    for value, project_value in to_project.items():
        lut[value] = from_project[project_value]
    return lut[labels.astype(np.int64)]


def check_label_values(labels: np.ndarray, allowed, name: str = "labels") -> None:
    """Raise :class:`InputError` if ``labels`` holds values outside ``allowed`` (or non-integers)."""
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)):
            raise InputError(f"{name}: label image holds NaN or infinite values; give an integer label map")
        if not np.all(labels == np.round(labels)):
            raise InputError(f"{name}: label image holds non-integer values; give an integer label map")
    present = set(np.unique(labels).astype(int).tolist())
    unknown = present - set(int(a) for a in allowed)
    if unknown:
        raise InputError(
            f"{name}: unknown label values {sorted(unknown)} (allowed {sorted(int(a) for a in allowed)}); "
            "map your labels to LV cavity=1, LV myocardium=2, RV cavity=3 or pass --label-convention acdc"
        )
