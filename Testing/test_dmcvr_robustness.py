"""DMCVR robustness: the roughness guard against decodes that the slerp of two inverted codes spoils
(MR phantom seed 0: noisy mid-gap crops in the basal half whose LV/RV the net then misses)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from CardiacDiffusionLib.dmcvr import reconstruction as R
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.metrics.overlap import dice
from CardiacDiffusionLib.models.store import list_models
from CardiacDiffusionLib.phantoms.scanner import make_subject
from CardiacDiffusionLib.reconstruction.baselines import shape_labels

needs_model = pytest.mark.skipif(not any(m["workflow"] == "dmcvr" for m in list_models()), reason="no DMCVR model")


def test_roughness_has_the_known_values_of_a_ramp_and_a_checkerboard():
    ramp = torch.arange(8.0)[None, None, :, None].expand(1, 1, 8, 8) * 0.01  # 0.01 per row, flat along columns
    board = torch.from_numpy((np.indices((8, 8)).sum(0) % 2).astype(np.float32))[None, None]
    assert R.roughness(ramp) == pytest.approx([0.005])
    assert R.roughness(board) == pytest.approx([1.0])
    # the reference is the position-weighted roughness of the two neighbours: 0.25 * 0.005 + 0.75 * 1
    ratio = R.roughness_ratio(board, ramp, board, np.array([0.75]))
    assert ratio == pytest.approx([1.0 / (0.25 * 0.005 + 0.75)])


@needs_model
@pytest.mark.parametrize("guard", [0.0, -1.0, float("nan")])
def test_a_bad_guard_is_an_input_error(guard):
    stack = make_subject(0, matrix=64, pixel_mm=2.5).sax
    with pytest.raises(InputError, match="guard"):
        R.dmcvr(stack, stack.positions[:1] + 5.0, device="cpu", guard=guard)


@needs_model
def test_degraded_mid_gap_slices_of_phantom_0_are_decoded_again():
    subject = make_subject(0)  # the default 10 mm gap, 128 px of 1.5625 mm, SAX labels given
    stack = subject.sax.subset(np.arange(1, 5))  # the basal slices whose mid-gap decodes fail (docs/models/dmcvr.md)
    targets = stack.positions[:-1] + 5.0  # half-way: 3 generated slices
    shape = shape_labels(stack.labels, stack.positions, targets, stack.pixel_spacing)
    seen = {}
    ratio_fn = R.roughness_ratio

    def record(*args):
        seen["ratio"] = ratio_fn(*args)
        return seen["ratio"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_num_threads(1)
        _, plain = R.dmcvr(stack, targets, device="cpu", guard=np.inf)
        R.roughness_ratio = record
        try:
            _, guarded = R.dmcvr(stack, targets, device="cpu", guard=R.ROUGHNESS_GUARD)
        finally:
            R.roughness_ratio = ratio_fn

    def area(labels, value):
        return np.array([(s == value).sum() for s in labels], float)

    # without the guard the net misses most of the RV in the noisy decodes (measured: 15-49 % of shape's area)
    assert "ratio" in seen, "the default guard is off"
    assert np.all(seen["ratio"] > 1.4)  # measured 1.53-1.71
    assert np.all(area(plain, 3) < 0.6 * area(shape, 3))
    # with it every mid-gap slice has LV and RV areas close to shape's and agrees with it
    for value in (1, 3):
        assert np.all(np.abs(area(guarded, value) / area(shape, value) - 1) < 0.2)
        assert dice(guarded == value, shape == value) > 0.85
        assert dice(guarded == value, shape == value) > dice(plain == value, shape == value) + 0.05
