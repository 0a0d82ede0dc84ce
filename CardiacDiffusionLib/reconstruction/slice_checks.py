"""Slices a reconstruction treats apart: blank ones (a single value: padded or missing) and unlabelled ones
between labelled ones; and what dmcvr says of them (``input_warnings``, also shown by ``inspect``).

numpy only, so that ``inspect`` reports them without importing torch.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..geometry.stack import SliceStack


def blank_slices(pixels: np.ndarray) -> np.ndarray:
    """(n,) bool: slices holding a single value (no image: a padded or missing slice)."""
    flat = np.asarray(pixels).reshape(len(pixels), -1)
    return flat.max(1) == flat.min(1)


def unlabelled_between(labels: np.ndarray | None) -> np.ndarray:
    """(n,) bool: slices without any label lying between labelled slices (labels left out, not an empty
    slice: the heart is continuous). Slices beyond the first and last labelled ones are taken as empty."""
    if labels is None:
        return np.zeros(0, bool)
    has = np.asarray(labels).reshape(len(labels), -1).any(1)
    out = np.zeros(len(has), bool)
    idx = np.nonzero(has)[0]
    if len(idx):
        out[idx[0] : idx[-1] + 1] = ~has[idx[0] : idx[-1] + 1]
    return out


def _slices_named(stack: SliceStack, mask: np.ndarray) -> str:
    idx = np.nonzero(mask)[0]
    return f"slice(s) {', '.join(map(str, idx))} (0-based, at {', '.join(f'{p:.1f}' for p in stack.positions[idx])} mm)"


def input_warnings(stack: SliceStack) -> list[str]:
    """What dmcvr does differently on this stack: blank slices, slices left unlabelled between labelled ones."""
    blank = blank_slices(stack.pixels)
    if blank.all():
        raise InputError(f"{stack.source}: every slice holds a single value; there is no image to reconstruct from")
    out = []
    if blank.any():
        out.append(f"{stack.source}: {_slices_named(stack, blank)} hold a single value (no image: a padded or missing "
                   "slice): dmcvr does not look for the heart there and labels nothing there, and the slices it generates "
                   "next to them blend towards a blank image; remove such slices from the stack")  # fmt: skip
    unlabelled = unlabelled_between(stack.labels)
    if unlabelled.any():
        out.append(f"{stack.source}: {_slices_named(stack, unlabelled)} carry no labels between labelled slices: dmcvr "
                   "labels them itself (morphology net, only the label values the given labels use); label them to "
                   "keep your own")  # fmt: skip
    if stack.labels is not None:
        n_labelled = int(stack.labels.reshape(stack.n, -1).any(1).sum())
        if 0 < n_labelled < stack.n / 2:  # ACDC: at least 70 % of a stack's slices carry labels
            out.append(f"{stack.source}: labels on only {n_labelled} of {stack.n} slices: dmcvr takes the slices beyond "
                       "them as holding no heart (a structure stops half-way towards them); label every slice the "
                       "heart is in, or give no labels and dmcvr segments them all")  # fmt: skip
    return out
