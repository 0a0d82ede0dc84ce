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
#: Display colours (RGB 0..1) of Slicer segments, the report and the icons: Slicer's hues (red, brown, blue) with
#: a light cavity and a dark myocardium, so they stay apart for protan, deutan and tritan readers too (CIEDE2000
#: >= 44 opaque, >= 19 at half opacity over grey; Slicer's red 0.85, 0.2, 0.2 and brown 0.55, 0.35, 0.2 were 0.9
#: apart for protan readers). Testing/test_label_colours.py measures them.
MR_LABEL_COLORS: dict[str, tuple[float, float, float]] = {
    "LV": (1.0, 0.65, 0.55),
    "MYO": (0.40, 0.18, 0.05),
    "RV": (0.25, 0.50, 1.0),
}
CT_LABELS: dict[int, str] = {1: "LA", 2: "LV", 3: "RA", 4: "RV", 5: "MYO", 6: "AO", 7: "PA", 8: "LAA"}

#: value in the named convention -> value in the project convention
CONVENTIONS: dict[str, dict[int, int]] = {
    "project": {0: 0, 1: 1, 2: 2, 3: 3},
    "mnms": {0: 0, 1: 1, 2: 2, 3: 3},
    "ukbb": {0: 0, 1: 1, 2: 2, 3: 3},
    "acdc": {0: 0, 1: 3, 2: 2, 3: 1},
}


#: a project-convention label map is refused as ACDC-numbered when label 3's edge touches the myocardium along
#: at least ENCLOSED of its pixels and label 1's along at most OPEN. Measured (edge pixels next to label 2, pooled
#: over slices holding 1, 2 and 3): LV cavity 0.98-1.00 on all 160 ACDC volumes, 0.96-1.00 on the phantom SAX
#: stack and its reconstructions, 0.87 on its 3D truth, 0.77-0.78 on its LAX views; RV cavity 0.26-0.46 on all.
#: Cavities mostly made of edge (over SOLID of their pixels; seen <= 0.38, noise 1.0) are too small to tell.
ENCLOSED, OPEN, SOLID = 0.7, 0.6, 0.67


def convert_labels(
    labels: np.ndarray, source: str, target: str = "project", name: str = "labels", hint: str | None = None
) -> np.ndarray:
    """Map a label array from one convention to another; unknown values raise :class:`InputError` (with
    ``hint`` as the advice, if given)."""
    if source not in CONVENTIONS or target not in CONVENTIONS:
        raise InputError(f"unknown label convention {source!r} or {target!r}; use one of {sorted(CONVENTIONS)}")
    check_label_values(labels, CONVENTIONS[source].keys(), name, hint)
    to_project = CONVENTIONS[source]
    from_project = {v: k for k, v in CONVENTIONS[target].items()}
    lut = np.zeros(max(to_project) + 1, dtype=np.uint8)
    for value, project_value in to_project.items():
        lut[value] = from_project[project_value]
    return lut[labels.astype(np.int64)]


def check_label_values(labels: np.ndarray, allowed, name: str = "labels", hint: str | None = None) -> None:
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
            + (hint or "map your labels to LV cavity=1, LV myocardium=2, RV cavity=3 or pass --label-convention acdc")
        )


def check_not_acdc_numbering(labels: np.ndarray, name: str = "labels") -> None:
    """Raise :class:`InputError` if project-convention ``labels`` (slices on axis 0) look ACDC-numbered.

    The LV cavity is enclosed by the myocardium (2), the RV cavity touches it only along the septum: on the
    slices holding 1, 2 and 3, label 3 enclosed and label 1 open means LV and RV are swapped. Labels without
    all three structures, or with cavities too small to have an inside, are not checked.
    """
    slices = np.all([(labels == v).any(axis=(1, 2)) for v in (1, 2, 3)], axis=0)
    if not slices.any():
        return
    part = labels[slices]
    rows, cols = part.shape[1:]
    padded = np.pad(part, ((0, 0), (1, 1), (1, 1)))
    steps = ((-1, 0), (1, 0), (0, -1), (0, 1))
    neighbours = [padded[:, 1 + dr : rows + 1 + dr, 1 + dc : cols + 1 + dc] for dr, dc in steps]
    next_to_myo = np.any([n == 2 for n in neighbours], axis=0)
    enclosed = {}
    for value in (1, 3):
        inside = part == value
        edge = inside & np.any([n != value for n in neighbours], axis=0)
        if np.count_nonzero(edge) > SOLID * np.count_nonzero(inside):
            return  # specks or noise, not cavities
        enclosed[value] = np.count_nonzero(edge & next_to_myo) / np.count_nonzero(edge)
    if enclosed[3] >= ENCLOSED and enclosed[1] <= OPEN:
        raise InputError(
            f"{name}: labels look like ACDC numbering (3 = LV cavity inside the myocardium): pass --label-convention "
            f"acdc; without it labels are read as 1 = LV cavity, 2 = LV myocardium, 3 = RV cavity (here the "
            f"myocardium surrounds {enclosed[3]:.0%} of label 3's edge but only {enclosed[1]:.0%} of label 1's)"
        )
