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


ACDC = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"


@pytest.mark.skipif(not (ACDC / "patient061_frame01.h5").exists(), reason="shared ACDC data missing")
def test_gap_scores_are_the_documented_pooling_against_skimage_and_medpy():
    """One real ACDC volume, linear method: PSNR is skimage's on the dropped slices together (MSE pooled,
    not the mean of per-slice PSNRs), SSIM the mean of per-slice Gaussian SSIMs (data range 1), Dice
    medpy's on all dropped slices at once (not a mean of per-slice Dice)."""
    medpy = pytest.importorskip("medpy.metric.binary")
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from CardiacDiffusionLib.io.acdc import read_acdc
    from CardiacDiffusionLib.labels import MR_LABELS
    from CardiacDiffusionLib.reconstruction.baselines import get_method
    from CardiacDiffusionLib.reconstruction.gap import score_volume, split_kept_dropped

    stack = read_acdc(ACDC / "patient061_frame01.h5")
    kept, dropped = split_kept_dropped(stack.n)
    assert list(dropped) == [i for i in range(1, stack.n, 2) if i < kept[-1]]
    scores = score_volume(stack, "linear")
    images, labels = get_method("linear")(stack.subset(kept), stack.positions[dropped])
    truth, truth_labels = stack.pixels[dropped].astype(np.float64), stack.labels[dropped]
    assert truth.min() >= 0 and truth.max() <= 1  # data range 1 is the images' range
    pooled = peak_signal_noise_ratio(truth, images.astype(np.float64), data_range=1.0)
    per_slice = np.mean([peak_signal_noise_ratio(t, p, data_range=1.0) for t, p in zip(truth, images.astype(np.float64))])
    assert scores["psnr"] == pytest.approx(pooled, abs=1e-9) and abs(pooled - per_slice) > 0.05
    ssims = [structural_similarity(t, p, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
             for t, p in zip(truth, images.astype(np.float64))]  # fmt: skip
    assert scores["ssim"] == pytest.approx(np.mean(ssims), abs=1e-9) and 0.2 < scores["ssim"] < 0.9
    for value, name in MR_LABELS.items():
        pred, ref = labels == value, truth_labels == value
        assert scores["dice"][name] == pytest.approx(medpy.dc(pred, ref), abs=1e-12)
    per_slice_dice = [medpy.dc(p, r) for p, r in zip(labels == 2, truth_labels == 2) if p.any() or r.any()]
    assert abs(scores["dice"]["MYO"] - np.mean(per_slice_dice)) > 0.005


def test_compare_methods_pairs_volumes_and_refuses_bad_tables():
    """compare_methods pairs rows by volume name (order does not matter), gives scipy's numbers, leaves
    null scores out, and refuses a missing method or malformed rows with an InputError."""
    import json

    from scipy import stats

    from CardiacDiffusionLib.reconstruction.gap import compare_methods

    def row(volume, psnr, ssim, myo):
        return {"volume": volume, "psnr": psnr, "ssim": ssim, "dice": {"LV": 0.9, "MYO": myo, "RV": None}, "warnings": []}

    a = [row(f"v{i}", 16.0 + i * 0.1, 0.40 + 0.003 * i, m) for i, m in enumerate([0.81, 0.79, 0.85, 0.72, 0.90, 0.80])]
    b = [row(f"v{i}", 16.0 + i * 0.1 - s, 0.40, m) for i, (s, m) in enumerate(
        zip([0.05, -0.02, 0.11, 0.01, 0.04, 0.2], [0.80, 0.80, 0.80, 0.80, 0.80, 0.80]))]  # fmt: skip
    table = {"dmcvr": {"rows": a, "model": {"name": "x"}}, "shape": {"rows": b[::-1]}}
    result = compare_methods(table, "dmcvr", ["shape"])["shape"]
    d = np.array([x["psnr"] - y["psnr"] for x, y in zip(a, b)])  # 0.05, -0.02, 0.11, ... up to rounding
    boot = stats.bootstrap((d,), np.mean, method="BCa", n_resamples=10000, random_state=np.random.default_rng(0))
    assert result["psnr"]["n"] == 6 and result["psnr"]["mean"] == pytest.approx(d.mean(), abs=1e-4)
    assert result["psnr"]["ci95"] == [round(boot.confidence_interval.low, 4), round(boot.confidence_interval.high, 4)]
    assert result["psnr"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-3)
    assert (result["dice"]["MYO"]["wins"], result["dice"]["MYO"]["ties"], result["dice"]["MYO"]["losses"]) == (3, 1, 2)
    assert result["dice"]["LV"]["ties"] == 6 and result["dice"]["LV"]["wilcoxon_p"] is None
    assert result["dice"]["RV"] == {"n": 0, "mean": None, "ci95": None, "wins": 0, "ties": 0, "losses": 0,
                                    "wilcoxon_p": None}  # fmt: skip
    json.dumps(result, allow_nan=False)
    with pytest.raises(InputError, match="no method 'linear'; it has dmcvr, shape"):
        compare_methods(table, "dmcvr", ["linear"])
    for bad in (3, [{"psnr": 1.0}], [{**a[0], "psnr": "16"}], [{**a[0], "dice": {"LV": 0.9}}]):
        with pytest.raises(InputError, match="rows are not"):
            compare_methods({"dmcvr": {"rows": a}, "shape": {"rows": bad}}, "dmcvr", ["shape"])
