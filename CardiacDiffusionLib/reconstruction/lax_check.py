"""The LAX check: Dice of a reconstructed SAX label volume on each LAX plane.

The volume is resampled (nearest neighbour, in physical space) onto the LAX image's grid; Dice
is computed per label over the LAX pixels that lie inside the volume's extent only (the LAX
image also shows atria and the apex cap that no SAX stack covers). A label absent from both the
LAX labels and the resampled volume inside that region gets ``None`` (undefined, not 1).
Several methods are checked side by side on the same planes by :func:`methods_lax_dice` and
:func:`compare_with_baselines` (``reconstruct`` beside the classical baselines, the demo).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry.planes import as_plane, coverage_mask, resample_to
from ..geometry.stack import SliceStack
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


def methods_lax_dice(
    stack: SliceStack, methods: Iterable[str], spacing: float, lax: dict[str, sitk.Image],
    options: dict[str, dict] | None = None, keep: Callable[[str, object], None] | None = None,
) -> tuple[dict[str, dict[str, dict[str, float | None]]], dict[str, float]]:
    """Each of ``methods`` in turn reconstructs ``stack`` at ``spacing`` mm (:func:`.volume.reconstruct`, with
    ``options[method]``) and is checked on ``lax``: ``({method: {lax name: {label: dice}}}, {method: seconds of its
    reconstruction})``. One volume at a time: ``keep(method, reconstruction)`` sees each before it is dropped, so
    the memory check of one method's grid covers them all. A method that makes no labels is an InputError."""
    from .volume import reconstruct

    tables, seconds = {}, {}
    for method in methods:
        start = time.perf_counter()
        result = reconstruct(stack, method, spacing, **(options or {}).get(method, {}))
        seconds[method] = round(time.perf_counter() - start, 2)
        if result.labels is None:
            raise InputError(f"{stack.source}: {method} made no labels (the stack has none) to check on the LAX planes")
        tables[method] = lax_dice_table(result.labels, lax)
        if keep is not None:
            keep(method, result)
        del result
    return tables, seconds


#: the note beside a table holding both nearest and linear (README: `linear`)
LINEAR_IS_NEAREST = ("linear's labels are nearest's (one-hot maps between two slices, then argmax: the nearer "
                     "slice's label), so are its Dice; linear differs in its intensities only")  # fmt: skip


def side_by_side(method: str, table: dict[str, dict], baselines: dict[str, dict[str, dict]], sep: str = "  ") -> dict:
    """``{"<LAX name><sep><method>": {label: dice}}``, plane by plane, ``method`` first, then each baseline."""
    rows = {}
    for plane, row in table.items():
        rows[f"{plane}{sep}{method}"] = row
        rows.update({f"{plane}{sep}{name}": other[plane] for name, other in baselines.items() if plane in other})
    return rows


def compare_with_baselines(method: str, table: dict[str, dict], baselines: dict[str, dict[str, dict]]) -> list[str]:
    """One line per LAX plane: ``method``'s mean Dice there beside the best baseline's, and whether it is ahead
    (by more than 0.0005), level or behind. The mean is over the labels every method scores on that plane (a label
    in neither the plane nor a volume is null for that method), named when not all of them."""
    lines = []
    for plane, row in table.items():
        rows = {method: row, **{name: other[plane] for name, other in baselines.items() if plane in other}}
        labels = [n for n in row if all(r.get(n) is not None for r in rows.values())]
        if len(rows) < 2 or not labels:
            lines.append(f"{plane}: no label that {method} and the baselines all score; see the table")
            continue
        means = {name: float(np.mean([r[n] for n in labels])) for name, r in rows.items()}
        best = max(means[name] for name in rows if name != method)
        names = ", ".join(name for name in rows if name != method and round(means[name], 4) == round(best, 4))
        over = "" if len(labels) == len(row) else f" ({', '.join(labels)})"
        diff = round(means[method] - best, 3)
        verdict = "level" if diff == 0 else f"{'ahead' if diff > 0 else 'behind'} by {abs(diff):.3f}"
        lines.append(f"{plane}: {method} mean Dice{over} {means[method]:.3f}, best baseline {names} {best:.3f}: {verdict}")
    return lines


#: LAX and SAX labels that disagree this much where they cross (LV cavity, LV myocardium) are worth a warning:
#: on MR phantoms matched pairs agree at LV 0.98-0.99, MYO 0.96-0.97; a 5 mm shift of the LAX plane gives
#: LV 0.95-0.96, MYO 0.81-0.84; ES LAX with ED SAX LV 0.84, MYO 0.63-0.64; another subject's LAX MYO 0.16-0.76
AGREEMENT_MIN = {"LV": 0.8, "MYO": 0.7}
#: labels with fewer pixels than this on the crossing lines are not judged
AGREEMENT_MIN_PIXELS = 20


def lax_agreement(stack: SliceStack, lax_labels: sitk.Image, name: str = "LAX labels",
                  labels: dict[int, str] = MR_LABELS, reach_mm: float = 1.0) -> dict:
    """Dice of the SAX labels against the LAX labels where the planes cross: the LAX pixels within ``reach_mm`` of
    an acquired SAX slice's plane, against that slice's label there (nearest pixel). Before any reconstruction,
    this says whether the LAX and SAX labels describe the same heart in the same place (same phase, breath-hold
    and study); a reconstruction given these SAX labels keeps them on those lines.
    Returns ``{"pixels": n, "dice": {label: d or None}}`` (None: the label absent from both, or no crossing)."""
    if stack.labels is None:
        raise InputError(f"{stack.source}: has no labels to compare with {name}")
    lax_labels = as_plane(lax_labels, name)
    lax = sitk.GetArrayFromImage(lax_labels)
    check_label_values(lax, [0, *labels], name)
    sax = np.zeros_like(lax)
    near = np.zeros(lax.shape, bool)
    for k in range(stack.n):  # each slice as a slab 2 x reach_mm thick
        slab = sitk.GetImageFromArray(stack.labels[k][None].astype(lax.dtype))
        slab.SetOrigin(tuple(float(v) for v in stack.origins[k]))
        slab.SetDirection(tuple(stack.direction.flatten().tolist()))
        slab.SetSpacing((float(stack.pixel_spacing[0]), float(stack.pixel_spacing[1]), 2.0 * reach_mm))
        inside = coverage_mask(slab, lax_labels) & ~near
        if inside.any():
            sax[inside] = sitk.GetArrayFromImage(resample_to(slab, lax_labels, labels=True))[inside]
            near |= inside
    table = {}
    for value, label_name in labels.items():
        d = dice(sax[near] == value, lax[near] == value) if near.any() else float("nan")
        table[label_name] = None if np.isnan(d) else round(float(d), 4)
    return {"pixels": int(near.sum()), "dice": table, "label_pixels": {
        label_name: int(max((sax[near] == v).sum(), (lax[near] == v).sum())) for v, label_name in labels.items()}}


def lax_overview(stack: SliceStack, lax: dict[str, sitk.Image], spacing: float = 1.0) -> dict[str, dict]:
    """What each LAX label image offers the LAX check of a reconstruction of ``stack`` (``reconstruct --spacing``):
    its angle to the SAX slices, its pixels inside the reconstructed volume's extent and the labels there, and
    (SAX labels given) :func:`lax_agreement`; with warnings where the check would fail or mislead."""
    from .volume import output_grid

    volume = output_grid(stack, spacing)
    out = {}
    for key, image in lax.items():
        plane = as_plane(image, key)
        normal = np.array(plane.GetDirection()).reshape(3, 3)[:, 2]
        angle = float(np.degrees(np.arccos(min(1.0, abs(float(normal @ stack.normal))))))
        inside = coverage_mask(volume, plane)
        array = sitk.GetArrayFromImage(plane)
        row: dict = {"angle_to_sax_deg": round(angle, 1), "pixels_in_sax_extent": int(inside.sum()),
                     "label_pixels_in_sax_extent": {n: int((array[inside] == v).sum()) for v, n in MR_LABELS.items()}}
        warnings = []
        if not inside.any():
            warnings.append(f"{key}: the LAX plane does not intersect the SAX volume; the LAX check would fail "
                            "(same patient, study and frame of reference?)")  # fmt: skip
        elif angle < 45:
            warnings.append(f"{key}: the plane lies {angle:.0f} deg from the SAX slices, not across them as a "
                            "long-axis view does: is it a SAX image?")  # fmt: skip
        if stack.labels is not None and inside.any():
            agreement = lax_agreement(stack, plane, key)
            row["agreement_with_sax_labels"] = agreement
            poor = [f"{n} {agreement['dice'][n]:.2f}" for n, least in AGREEMENT_MIN.items()
                    if agreement["label_pixels"][n] >= AGREEMENT_MIN_PIXELS and (agreement["dice"][n] or 0.0) < least]
            if poor:
                warnings.append(f"{key}: its labels and the SAX labels disagree where the planes cross ({', '.join(poor)}): "
                                "another cardiac phase, a breath-hold shift or another study? A reconstruction's Dice "
                                "on this plane then measures the mismatch more than the reconstruction")  # fmt: skip
        row["warnings"] = warnings
        out[key] = row
    return out
