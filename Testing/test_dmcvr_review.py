"""DMCVR review: interpolation weights from physical positions, slerp at its limits, the DDIM schedule and the
shipped model's inversion round trip, acquired pixels and geometry on real DICOM, recorded in-plane shifts,
intensity range, blank slices, partly labelled stacks and an off-centre heart (shipped model, few DDIM steps)."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from CardiacDiffusionLib.dmcvr import reconstruction as R
from CardiacDiffusionLib.dmcvr.ddim import ddim_timesteps
from CardiacDiffusionLib.dmcvr.interpolate import interpolation_plan, slerp
from CardiacDiffusionLib.errors import InputError, QualityWarning
from CardiacDiffusionLib.metrics.overlap import dice
from CardiacDiffusionLib.models.store import list_models

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SUNNYBROOK = SHARED / "sunnybrook-SC-HF-I-1"
ACDC_065 = SHARED / "acdc" / "patient065_frame01.h5"
shipped = pytest.mark.skipif(not any(m["name"] == R.DEFAULT_MODEL for m in list_models()), reason="no shipped DMCVR model")
needs_sunnybrook = pytest.mark.skipif(not (SUNNYBROOK / "dicom").is_dir(), reason="shared Sunnybrook DICOM not available")
needs_acdc = pytest.mark.skipif(not ACDC_065.is_file(), reason="shared ACDC data not available")
KEEP, DROP = [0, 2, 4, 6, 8, 10, 11], [1, 3, 5, 7, 9]  # Sunnybrook: expert LV contours on slices 1-9


@pytest.fixture(scope="module")
def sunnybrook():
    """The real DICOM stack (12 slices, 256 x 256 of 1.367 mm, raw values 0-1148) and its LV cavity labels."""
    from CardiacDiffusionLib.io.contours import sunnybrook_labels
    from CardiacDiffusionLib.io.dicom import read_dicom_stack

    stack = read_dicom_stack(SUNNYBROOK / "dicom")
    return stack, sunnybrook_labels(stack, SUNNYBROOK / "contours")[0]


def _run(stack, targets, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, labels = R.dmcvr(stack, targets, device="cpu", **options)
    return images, labels, [str(w.message) for w in caught if issubclass(w.category, QualityWarning)]


def _lv_dice(labels, truth) -> np.ndarray:
    return np.array([dice(a == 1, b == 1) for a, b in zip(labels, truth)])


# ---------------------------------------------------------------- interpolation weights and slerp


def test_weights_follow_physical_positions_with_uneven_gaps():
    """Unsorted acquired positions 0, 22.5, 7.5, 20 mm (gaps 7.5, 12.5, 2.5): weights from mm, not from indices."""
    lo, hi, w = interpolation_plan([0.0, 22.5, 7.5, 20.0], [3.75, 12.5, 21.25, 20.0004, 22.5])
    assert lo.tolist() == [0, 2, 3, 3, 1] and hi.tolist() == [2, 3, 1, 3, 1]
    assert np.allclose(w, [0.5, 0.4, 0.5, 0.0, 0.0])


@pytest.mark.parametrize("theta", [0.0, 1e-7, 1e-3, 0.5, math.pi / 2, math.pi - 1e-3])
def test_slerp_turns_by_w_theta_and_keeps_the_norm(theta):
    g = torch.Generator().manual_seed(0)
    a, u = torch.randn(1, 1, 64, 64, generator=g), torch.randn(1, 1, 64, 64, generator=g)
    u = u - (u * a).sum() / (a * a).sum() * a
    u = u / u.norm() * a.norm()
    b = math.cos(theta) * a + math.sin(theta) * u
    for w in (0.25, 0.5):
        expected = math.cos(w * theta) * a + math.sin(w * theta) * u
        assert float((slerp(a, b, w) - expected).norm() / a.norm()) < 1e-3  # measured <= 1e-4 (at pi - 1e-3)


def test_slerp_of_opposite_codes_is_finite():
    """At exactly pi the great circle is undefined: lerp (finite; the zero vector half-way)."""
    a = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = slerp(a, -a, 0.25)
    assert torch.isfinite(out).all() and torch.allclose(out, 0.5 * a, atol=1e-6)


# ---------------------------------------------------------------- DDIM schedule and round trip


@shipped
@needs_acdc
def test_ddim_schedule_and_round_trip_with_the_shipped_model():
    """Timesteps 0..960 (N=25 of T=1000), 0..90 at strength 0.1; encode -> decode of real ACDC crops.
    Measured PSNR (crops 3-6 of 065 ED; the test takes crop 3): full inversion N=5 16.4-17.3, N=10 18.2-18.7, N=25 26.2-26.6, N=50 32.2-32.6 dB;
    strength 0.1 N=10 39.1-39.5 dB."""
    from CardiacDiffusionLib.io.acdc import read_acdc

    net, size, spacing = R.load_dmcvr(None, "cpu")
    assert ddim_timesteps(len(R._schedule(net, 1.0)), 25)[[0, -1]].tolist() == [0, 960]
    assert ddim_timesteps(len(R._schedule(net, 0.1)), 10)[[0, -1]].tolist() == [0, 90]
    with pytest.raises(InputError, match="strength"):
        R._schedule(net, 0.0)
    x = R._View.of(net, read_acdc(ACDC_065), size, spacing, 8).crops(0.0)[1][3:4]

    def psnr(steps, strength):
        flat = R._encode_flat(net, x, steps, strength, None, None)
        y = R._decode(net, R._unflatten(net, flat, x.shape[-2:]), steps, strength, None, None)
        return (10 * torch.log10(1 / ((y - x) ** 2).mean(dim=(1, 2, 3)))).numpy()

    p10, p25, partial = psnr(10, 1.0), psnr(25, 1.0), psnr(10, 0.1)
    assert np.all(p25 > 24) and np.all(p25 > p10 + 5) and np.all(partial > 35), (p10, p25, partial)


# ---------------------------------------------------------------- geometry


@shipped
@needs_sunnybrook
def test_acquired_slices_are_the_inputs_own_pixels_on_the_linear_grid(sunnybrook):
    """Sunnybrook's positions are rounded (11 gaps of 9.99997 mm): the 1 mm output still holds each acquired
    slice's own pixels (not a decoded copy), on the grid the linear method writes."""
    import SimpleITK as sitk

    from CardiacDiffusionLib.reconstruction.volume import reconstruct

    stack = sunnybrook[0]
    ours, ref = reconstruct(stack, "dmcvr", 1.0, steps=1, device="cpu"), reconstruct(stack, "linear", 1.0)
    for image in (ours.image, ours.labels):
        assert image.GetSize() == ref.image.GetSize() == (256, 256, 111)
        assert np.allclose(image.GetOrigin(), ref.image.GetOrigin()) and np.allclose(image.GetSpacing(), ref.image.GetSpacing())
        assert np.allclose(image.GetDirection(), ref.image.GetDirection())
    pixels = sitk.GetArrayFromImage(ours.image)
    assert np.array_equal(pixels[::10], stack.pixels)
    assert not np.array_equal(pixels[5], stack.pixels[0])


@shipped
def test_recorded_in_plane_shifts_are_undone_before_the_networks():
    """Slices moved by whole pixels (-6..6 mm) with their origins moved to match (the same voxels in space) give
    the same generated labels and acquired pixels. Measured: labels 99.99 % equal, acquired pixels exact."""
    from CardiacDiffusionLib.phantoms.mr import MRPhantom
    from CardiacDiffusionLib.phantoms.scanner import acquire_sax

    full = acquire_sax(MRPhantom(2, "ED"), gap_mm=10, pixel_mm=1.5625, matrix=128, noise_sigma=0.04)
    stack = full.subset(range(0, full.n, 2))
    d = np.random.default_rng(0).integers(-4, 5, size=(stack.n, 2))
    d[0] = 0
    moved = replace(
        stack, pixels=np.stack([np.roll(p, (-a, -b), (0, 1)) for p, (a, b) in zip(stack.pixels, d)]),
        labels=np.stack([np.roll(p, (-a, -b), (0, 1)) for p, (a, b) in zip(stack.labels, d)]),
        origins=stack.origins + d[:, 1:] * stack.pixel_spacing[0] * stack.row_dir + d[:, :1] * stack.pixel_spacing[1] * stack.col_dir,
        meta={},
    )  # fmt: skip
    assert moved.has_shifts() and np.allclose(moved.positions, stack.positions)
    targets = np.sort(np.concatenate([stack.positions, full.positions[1:-1:2]]))
    images, labels, _ = _run(stack, targets, steps=4)
    images_m, labels_m, _ = _run(moved, targets, steps=4)
    inner = np.s_[:, 8:-8, 8:-8]  # np.roll wraps the borders round
    assert np.mean(labels[inner] == labels_m[inner]) > 0.999
    assert np.array_equal(images[::2][inner], images_m[::2][inner])


# ---------------------------------------------------------------- intensities and blank slices


@shipped
@needs_sunnybrook
def test_intensity_scale_and_offset_change_nothing_but_the_scale(sunnybrook):
    """Raw DICOM values 0-1148, twice them, and a CT-like negative range (-1024..124): the same reconstruction."""
    stack = sunnybrook[0].subset([2, 4, 6])
    targets = np.array([stack.positions[0] + 5.0, stack.positions[1] + 5.0])
    images, labels, _ = _run(stack, targets, steps=1)
    for scale, offset in ((2.0, 0.0), (1.0, -1024.0)):
        other = replace(stack, pixels=stack.pixels * scale + offset, meta={})
        images_o, labels_o, _ = _run(other, targets, steps=1)
        assert np.array_equal(labels_o, labels)
        assert np.allclose(images_o, images * scale + offset, atol=0.05)


@shipped
@needs_sunnybrook
def test_a_blank_slice_is_warned_about_and_does_not_move_the_heart(sunnybrook):
    """A slice of zeros (padded/missing) at the base end made the morphology net invent a heart there (869 LV,
    758 RV pixels), which moved the crop: LV Dice of the dropped slice 9 fell 0.61 -> 0.07. A constant slice in
    the middle: mean LV Dice 0.787 -> 0.575. Now (3 steps) 0.61 and 0.778, with a warning naming the slice."""
    stack, truth = sunnybrook
    stack = stack.with_labels(None)
    zeros, const = stack.pixels.copy(), stack.pixels.copy()
    zeros[11], const[6] = 0.0, 300.0
    images, labels, said = _run(replace(stack, pixels=zeros, meta={}).subset(KEEP), stack.positions[DROP], steps=3)
    assert _lv_dice(labels, truth[DROP])[-1] > 0.45
    assert any("slice(s) 6 (0-based" in m and "single value" in m for m in said), said
    _, labels, said = _run(replace(stack, pixels=const, meta={}).subset(KEEP), stack.positions[DROP], steps=3)
    assert _lv_dice(labels, truth[DROP]).mean() > 0.7
    assert any("slice(s) 3 (0-based" in m for m in said), said
    flat = replace(stack, pixels=np.arange(stack.n, dtype=np.float32)[:, None, None] * np.ones_like(stack.pixels), meta={})
    with pytest.raises(InputError, match="every slice holds a single value"):
        R.dmcvr(flat, stack.positions[:2] + 1, device="cpu", steps=1)


# ---------------------------------------------------------------- partial labels, localisation


@shipped
@needs_acdc
def test_a_slice_left_unlabelled_between_labelled_ones_is_labelled_by_the_net():
    """ACDC 065 ED, every other slice kept, the middle kept slice's labels left out: it kept 'no labels' (0 pixels,
    truth 1344) and so did every output slice nearer to it than to its neighbours. Now the net labels it (LV Dice
    measured 0.93), with a warning; the given slices keep their labels; with LV-only labels (Sunnybrook-style
    contours) it gets LV only. Labels on 1 of 4 slices: the others are taken as holding no heart, with a warning."""
    from CardiacDiffusionLib.io.acdc import read_acdc

    stack = read_acdc(ACDC_065).subset([0, 2, 4, 6])
    given = stack.labels.copy()
    given[2] = 0
    _, labels, said = _run(stack.with_labels(given), stack.positions, steps=1)
    assert np.array_equal(labels[[0, 1, 3]], given[[0, 1, 3]])
    assert dice(labels[2] == 1, stack.labels[2] == 1) > 0.85
    assert dice(labels[2] == 2, stack.labels[2] == 2) > 0.6
    assert any("slice(s) 2 (0-based" in m and "no labels between labelled" in m for m in said), said
    lv_only = np.where(given == 1, 1, 0)
    _, labels, _ = _run(stack.with_labels(lv_only), stack.positions, steps=1)
    assert set(np.unique(labels[2])) == {0, 1} and dice(labels[2] == 1, stack.labels[2] == 1) > 0.85
    one = np.zeros_like(given)
    one[1] = given[1]
    _, labels, said = _run(stack.with_labels(one), stack.positions, steps=1)
    assert not labels[[0, 2, 3]].any() and any("labels on only 1 of 4 slices" in m for m in said), said


@shipped
@needs_sunnybrook
def test_an_off_centre_heart_is_found_without_labels(sunnybrook):
    """The heart moved from the middle to near a corner (rows +60, columns -70 px; and rows -80, columns +80):
    the crop centre found without labels moves with it (measured within 4 and 9 mm; the centre is the net's
    labels' bounding box, RV included), dropped-slice LV Dice measured 0.81 and 0.77 (centred 0.79)."""
    stack, truth = sunnybrook
    net = R.load_dmcvr(None, "cpu")[0]

    def centre(s):  # (row, col) of the original description (dmcvr looks at this stack transposed)
        return np.array(R._View.of(net, s.subset(KEEP).transposed(), 64, 2.25, 8).center)[::-1]

    centred = centre(stack.with_labels(None))
    for (top, bottom), (left, right) in (((60, 0), (0, 70)), ((0, 80), (80, 0))):
        pad = ((0, 0), (top, bottom), (left, right))
        window = np.s_[:, bottom : bottom + 256, right : right + 256]
        moved = replace(stack, pixels=np.pad(stack.pixels, pad)[window], labels=None, meta={})
        moved_truth = np.pad(truth, pad)[window]
        offset = centre(moved) - centred - (top - bottom, left - right)
        assert np.hypot(*offset) * stack.pixel_spacing[0] < 12.0, offset
        _, labels, _ = _run(moved.subset(KEEP), stack.positions[DROP], steps=3)
        assert _lv_dice(labels, moved_truth[DROP]).mean() > 0.7
