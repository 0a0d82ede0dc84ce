"""Classical reconstruction on stacks with known answers: a sphere sampled by oblique slices."""

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.geometry.stack import SliceStack
from CardiacDiffusionLib.metrics.overlap import dice
from CardiacDiffusionLib.reconstruction.baselines import bracket, shape
from CardiacDiffusionLib.reconstruction.lax_check import lax_dice
from CardiacDiffusionLib.reconstruction.volume import reconstruct, target_positions
from CardiacDiffusionLib.geometry.planes import grid_points, plane_image

SPACING = 1.5
CENTER = np.array([10.0, -20.0, 30.0])


def oblique_frame():
    a = np.deg2rad(30)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    col = np.array([-np.sin(a) * 0.8, np.cos(a) * 0.8, 0.6])
    col -= (col @ row) * row
    return row, col / np.linalg.norm(col)


def ball_labels(points):
    """Nested balls: LV cavity r<18, myocardium 18..26, RV a ball beside them."""
    r = np.linalg.norm(points - CENTER, axis=-1)
    out = np.zeros(points.shape[:-1], np.uint8)
    out[np.linalg.norm(points - CENTER - np.array([34.0, 0, 0]), axis=-1) < 14] = 3
    out[r < 26] = 2
    out[r < 18] = 1
    return out


def sample_stack(positions, shifts=None):
    """Slices of the analytic phantom at ``positions`` (mm along the normal)."""
    row, col = oblique_frame()
    normal = np.cross(row, col)
    size = 48
    origin0 = CENTER - (row + col) * SPACING * (size - 1) / 2
    origins = np.array([origin0 + p * normal for p in positions])
    if shifts is not None:
        origins = origins + shifts[:, :1] * row + shifts[:, 1:] * col
    jj, ii = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    pixels, labels = [], []
    for o in origins:
        pts = o + ii[..., None] * SPACING * row + jj[..., None] * SPACING * col
        lab = ball_labels(pts)
        labels.append(lab)
        pixels.append(np.choose(lab, [0.1, 0.9, 0.3, 0.8]).astype(np.float32))
    return SliceStack(np.array(pixels), origins, row, col, (SPACING, SPACING), labels=np.array(labels))


def truth_on(image):
    return ball_labels(grid_points(image))


def test_output_frame_equals_input_frame():
    stack = sample_stack(np.arange(-24, 25, 8.0))
    rec = reconstruct(stack, "shape", spacing=1.0)
    image = stack.to_image()
    assert rec.image.GetOrigin() == pytest.approx(image.GetOrigin())
    assert rec.image.GetDirection() == pytest.approx(image.GetDirection())
    assert rec.image.GetSpacing() == pytest.approx((SPACING, SPACING, 1.0))
    assert rec.image.GetSize() == (48, 48, 49)
    assert rec.labels.GetSize() == rec.image.GetSize()
    # acquired slices come back unchanged at their positions
    arr = sitk.GetArrayFromImage(rec.labels)
    np.testing.assert_array_equal(arr[::8], stack.labels)


def test_shape_beats_nearest_and_is_accurate():
    stack = sample_stack(np.arange(-24, 25, 8.0))
    scores = {}
    for method in ("nearest", "linear", "shape"):
        rec = reconstruct(stack, method, spacing=1.0)
        truth = truth_on(rec.labels)
        arr = sitk.GetArrayFromImage(rec.labels)
        scores[method] = {v: dice(arr == v, truth == v) for v in (1, 2, 3)}
    assert scores["shape"][1] > scores["nearest"][1]
    assert scores["shape"][1] > 0.95
    assert scores["shape"][2] > scores["nearest"][2]
    # with two neighbours linear one-hot interpolation reduces to the nearer slice
    assert scores["linear"] == scores["nearest"]


def test_uneven_gaps_use_true_positions():
    positions = np.array([-24.0, -21.0, -6.0, 0.0, 15.0, 20.0, 24.0])
    stack = sample_stack(positions)
    report = stack.geometry_report()
    assert not report["uniform_gaps"] and report["warnings"]
    with pytest.raises(InputError, match="unevenly spaced"):
        stack.to_image()
    offsets = np.array([-20.0, -11.0, 5.0, 14.0, 21.0])
    truth = sample_stack(offsets).labels
    # the same slices wrongly assumed evenly spaced (what flattening the gaps would do)
    flat = sample_stack(positions)
    flat.origins = flat.origins[0] + np.linspace(0, 48, len(positions))[:, None] * flat.normal
    scores = {}
    for name, candidate in (("true", stack), ("flattened", flat)):
        _, labels = shape(candidate, candidate.positions[0] - positions[0] + offsets)
        scores[name] = np.mean([dice(np.isin(a, (1, 2)), np.isin(b, (1, 2))) for a, b in zip(labels, truth)])
    assert scores["true"] > 0.93
    assert scores["true"] > scores["flattened"] + 0.02


def test_in_plane_shifts_are_undone():
    positions = np.arange(-24, 25, 8.0)
    rng = np.random.default_rng(0)
    shifts = rng.uniform(-6, 6, size=(len(positions), 2))
    shifts[0] = 0
    shifted = sample_stack(positions, shifts)
    assert shifted.has_shifts()
    rec = reconstruct(shifted, "shape", 1.0)
    truth = truth_on(rec.labels)
    arr = sitk.GetArrayFromImage(rec.labels)
    assert dice(arr == 1, truth == 1) > 0.93


def test_bracket_weights_and_refusal():
    lower, upper, w = bracket(np.array([0.0, 10.0, 14.0]), np.array([0.0, 5.0, 10.0, 12.0, 14.0]))
    np.testing.assert_array_equal(lower, [0, 0, 0, 1, 1])
    np.testing.assert_allclose(w, [0, 0.5, 1, 0.5, 1])
    with pytest.raises(InputError, match="outside"):
        bracket(np.array([0.0, 10.0]), np.array([11.0]))
    np.testing.assert_allclose(target_positions(np.array([0.0, 9.5]), 2.0), [0, 2, 4, 6, 8])
    assert len(target_positions(np.array([0.0, 199.9]), 0.1)) == 2000
    # DICOM positions rounded to the micrometre (Sunnybrook: 12 slices, 10 mm apart, span 109.9997 mm): the grid
    # still reaches the last slice, at the acquired spacing and finer
    for spacing, count in ((10.0, 12), (5.0, 23), (1.0, 111)):
        grid = target_positions(np.array([0.0, 109.9997]), spacing)
        assert len(grid) == count and grid[-1] == 109.9997, spacing
    assert len(target_positions(np.array([0.0, 109.9997]), 110.0)) == 2  # the whole extent in one step
    with pytest.raises(InputError, match="2001 output slices .* at least 0.101 mm"):
        target_positions(np.array([0.0, 200.0]), 0.1)


def test_lax_check_on_reconstruction_and_refusal():
    stack = sample_stack(np.arange(-24, 25, 8.0))
    rec = reconstruct(stack, "shape", spacing=1.0)
    row, col = oblique_frame()
    normal = np.cross(row, col)
    lax = plane_image(CENTER, row, normal, (64, 64), (1.2, 1.2), pixel_type=sitk.sitkUInt8)
    lax_arr = truth_on(lax).astype(np.uint8)
    lax_labels = sitk.GetImageFromArray(lax_arr)
    lax_labels.CopyInformation(lax)
    table = lax_dice(rec.labels, lax_labels)
    assert table["LV"] > 0.9 and table["MYO"] > 0.8
    far = plane_image(CENTER + 500, row, normal, (16, 16), (1.0, 1.0), pixel_type=sitk.sitkUInt8)
    with pytest.raises(InputError, match="does not intersect"):
        lax_dice(rec.labels, far)
