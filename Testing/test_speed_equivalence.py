"""Sped-up code gives the outputs of the straightforward code it replaced, bit for bit.

Shape-based interpolation (``reconstruction.baselines``) now blends the two slices' signed distances only where
either is negative, inside the box around the labels (``label_box``), and mixes intensities in place; the
references below are the earlier full-slice versions, run on the shared real ACDC volumes and on stacks built to
reach the edge cases (structures on the image border, an empty slice between labelled ones, uneven gaps,
anisotropic pixels, in-plane shifts).
"""

from pathlib import Path

import numpy as np
import pytest

from CardiacDiffusionLib.geometry.stack import SliceStack
from CardiacDiffusionLib.reconstruction.baselines import (
    MR_SHAPE_LAYERS, _end_sdf, aligned_arrays, bracket, label_box, shape, shape_labels, signed_distance,
)  # fmt: skip
from CardiacDiffusionLib.reconstruction.volume import target_positions

ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"
needs_acdc = pytest.mark.skipif(not (ACDC / "patient001_frame01.h5").exists(), reason=f"shared ACDC data missing: {ACDC}")


def reference_shape_labels(labels, positions, targets, pixel_spacing, layers=MR_SHAPE_LAYERS):
    """The full-slice loop: every target, every layer, the blend over the whole slice."""
    lower, upper, weight = bracket(positions, targets)
    out = np.zeros((len(targets), *labels.shape[1:]), dtype=np.uint8)
    needed = np.unique(np.concatenate([lower, upper]))
    for value, members in layers:
        masks = {k: np.isin(labels[k], members) for k in needed}
        sdf = {k: signed_distance(masks[k], pixel_spacing, np.inf) for k in needed}
        for i, (lo, up, w) in enumerate(zip(lower, upper, weight)):
            if not (masks[lo].any() or masks[up].any()):
                continue
            below = sdf[lo] if masks[lo].any() else _end_sdf(sdf[up])
            above = sdf[up] if masks[up].any() else _end_sdf(sdf[lo])
            out[i][((1 - w) * below + w * above) < 0] = value
    return out


def reference_images(stack, targets):
    pixels, _ = aligned_arrays(stack)
    lower, upper, weight = bracket(stack.positions, targets)
    w = weight[:, None, None].astype(np.float32)
    return (1 - w) * pixels[lower] + w * pixels[upper]


def assert_bitwise(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


@needs_acdc
@pytest.mark.parametrize("name", ["patient001_frame01", "patient001_frame12", "patient061_frame01", "patient075_frame06"])
def test_shape_equals_full_slice_reference_on_acdc(name):
    from CardiacDiffusionLib.io.acdc import read_acdc

    path = ACDC / f"{name}.h5"
    if not path.exists():
        pytest.skip(f"{path} missing")
    stack = read_acdc(path)
    targets = target_positions(stack.positions, 0.5)
    rows, cols = label_box(stack.labels, [1, 2, 3])
    assert (rows.stop - rows.start) * (cols.stop - cols.start) < 0.5 * stack.labels[0].size  # the box does crop
    images, labels = shape(stack, targets)
    assert_bitwise(images, reference_images(stack, targets))
    reference = reference_shape_labels(stack.labels, stack.positions, targets, stack.pixel_spacing)
    assert_bitwise(labels, reference)
    assert {1, 2, 3} <= set(np.unique(labels).tolist())  # all three structures interpolated


def edge_case_labels(base: np.ndarray) -> np.ndarray:
    """Labels with structures cut by every image edge, an empty slice between labelled ones, a slice with the
    cavity alone and a structure only on the last slice."""
    labels = base.copy()
    labels[1] = np.roll(base[1], (base.shape[1] // 2, base.shape[2] // 2), axis=(0, 1))  # split over the corners
    labels[2] = 0  # empty between labelled slices: both neighbours taper towards it
    labels[3] = np.where(base[3] == 1, 1, 0)  # cavity without wall or RV
    labels[-1] = np.where(base[-1] > 0, 3, 0)  # only "RV" on the last slice
    return labels


def phantom_labels(n=6, rows=70, cols=90) -> np.ndarray:
    """Nested discs (cavity, wall) and a side disc (RV) drifting slice by slice."""
    r, c = np.mgrid[:rows, :cols]
    out = np.zeros((n, rows, cols), np.uint8)
    for k in range(n):
        cr, cc = 30 + 2 * k, 40 - 3 * k
        d = np.hypot(r - cr, c - cc)
        out[k][np.hypot(r - cr, c - cc - 22) < 9 + k] = 3
        out[k][d < 14 - k] = 2
        out[k][d < 8 - k] = 1
    return out


@pytest.mark.parametrize("pixel_spacing", [(1.5625, 1.5625), (1.3, 0.7), (0.9765625, 1.367188)])
def test_shape_labels_equal_reference_on_edge_cases(pixel_spacing):
    labels = edge_case_labels(phantom_labels())
    positions = np.array([0.0, 7.5, 20.0, 26.0, 38.5, 50.0])  # uneven gaps
    targets = np.concatenate([np.linspace(0, 50, 137), positions, [3.75, 13.75]])  # with exact slices and mid-gaps
    out = shape_labels(labels, positions, np.sort(targets), pixel_spacing)
    reference = reference_shape_labels(labels, positions, np.sort(targets), pixel_spacing)
    assert_bitwise(out, reference)
    assert out[:, 0, :].any() and out[:, -1, :].any() and out[:, :, 0].any() and out[:, :, -1].any()  # on the edges
    assert len(np.unique(out)) == 4


def test_shape_with_in_plane_shifts_equals_reference():
    labels = phantom_labels()
    n = len(labels)
    pixels = np.random.default_rng(0).normal(size=labels.shape).astype(np.float32) + labels
    direction = np.eye(3)
    shifts = np.array([[0, 0], [1.7, -0.4], [0, 0], [-2.2, 3.1], [0.5, 0.5], [0, 0]])
    origins = np.array([[sx, sy, 10.0 * k] for k, (sx, sy) in enumerate(shifts)])
    stack = SliceStack(pixels=pixels, origins=origins, row_dir=direction[0], col_dir=direction[1],
                       pixel_spacing=(1.25, 1.25), labels=labels, source="shifted phantom")  # fmt: skip
    assert stack.has_shifts()
    targets = target_positions(stack.positions, 0.7)
    images, out = shape(stack, targets)
    _, aligned = aligned_arrays(stack)
    assert_bitwise(images, reference_images(stack, targets))
    assert_bitwise(out, reference_shape_labels(aligned, stack.positions, targets, stack.pixel_spacing))
    assert n == stack.n


def test_no_labels_in_any_layer_gives_zeros():
    labels = np.zeros((3, 20, 30), np.uint8)
    labels[1, 5, 5] = 7  # a value no layer paints
    out = shape_labels(labels, np.array([0.0, 5.0, 10.0]), np.linspace(0, 10, 11), (1.0, 1.0))
    assert out.shape == (11, 20, 30) and not out.any()
    assert label_box(labels, [1, 2, 3]) is None


@needs_acdc
def test_signed_distance_in_box_equals_full_slice():
    """The claim behind ``label_box``: inside the box, both distance transforms equal the full slice's."""
    from CardiacDiffusionLib.io.acdc import read_acdc

    labels = read_acdc(ACDC / "patient001_frame01.h5").labels
    box = label_box(labels, [1, 2, 3])
    compared = 0
    for spacing in [(1.5, 1.5), (1.3, 0.7), (0.9765625, 1.367188)]:
        for _, members in MR_SHAPE_LAYERS:
            for k in range(len(labels)):
                mask = np.isin(labels[k], members)
                if mask.any():
                    full = signed_distance(mask, spacing, np.inf)
                    assert_bitwise(signed_distance(mask[box], spacing, np.inf), full[box])
                    compared += 1
    assert compared >= 60
