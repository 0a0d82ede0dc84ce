"""Metrics: cross-checks against medpy 0.5.2, SimpleITK and MONAI on real ACDC labels, phantoms with
known answers, the empty-mask convention and PSNR/SSIM."""

from __future__ import annotations

import math
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.metrics import (
    asd,
    assd,
    dice,
    hd,
    hd95,
    jaccard,
    paired_difference,
    per_label,
    psnr,
    rvd_percent,
    ssim,
    surface_distances,
    surface_distances_from_images,
    voe_percent,
)

ACDC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"
ACDC_NAMES = {1: "RV", 2: "MYO", 3: "LV"}
SPACING = (10.0, 1.5, 1.5)  # assumed (slice, row, col) mm; the HDF5 files store no spacing


def _acdc(name: str, key: str) -> np.ndarray:
    h5py = pytest.importorskip("h5py")
    path = ACDC / f"{name}.h5"
    if not path.exists():
        pytest.skip(f"shared ACDC data missing at {path}")
    with h5py.File(path, "r") as f:
        return f[key][:]


def _shift(labels: np.ndarray, offsets: tuple[int, ...]) -> np.ndarray:
    """Shift with zero fill (no wrap-around)."""
    out = np.zeros_like(labels)
    src = tuple(slice(max(-o, 0), n - max(o, 0)) for o, n in zip(offsets, labels.shape))
    dst = tuple(slice(max(o, 0), n - max(-o, 0)) for o, n in zip(offsets, labels.shape))
    out[dst] = labels[src]
    return out


@pytest.fixture(scope="module")
def acdc_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real (prediction, reference) label pairs: ES vs ED of patient001, and ED shifted by one slice and
    two columns vs ED of patient002."""
    ed1, es1 = _acdc("patient001_frame01", "label"), _acdc("patient001_frame12", "label")
    ed2 = _acdc("patient002_frame01", "label")
    return {"ES-vs-ED": (es1, ed1), "shifted": (_shift(ed2, (1, 0, 2)), ed2)}


def _sitk(mask: np.ndarray, spacing=SPACING) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    return image


def test_overlap_matches_medpy_and_simpleitk(acdc_pairs):
    medpy = pytest.importorskip("medpy.metric.binary")
    for pred_labels, ref_labels in acdc_pairs.values():
        for value in ACDC_NAMES:
            pred, ref = pred_labels == value, ref_labels == value
            overlap = sitk.LabelOverlapMeasuresImageFilter()
            overlap.Execute(_sitk(pred), _sitk(ref))
            d, j = dice(pred, ref), jaccard(pred, ref)
            assert 0.3 < d < 1.0  # a real, imperfect overlap
            assert d == pytest.approx(medpy.dc(pred, ref), abs=1e-12)
            assert d == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-12)
            assert j == pytest.approx(medpy.jc(pred, ref), abs=1e-12)
            assert j == pytest.approx(overlap.GetJaccardCoefficient(), abs=1e-12)
            assert voe_percent(pred, ref) == pytest.approx(100 * (1 - overlap.GetJaccardCoefficient()), abs=1e-10)
            assert rvd_percent(pred, ref) == pytest.approx(100 * medpy.ravd(pred, ref), abs=1e-10)


def test_surface_distances_match_medpy(acdc_pairs):
    medpy = pytest.importorskip("medpy.metric.binary")
    for pred_labels, ref_labels in acdc_pairs.values():
        for value in ACDC_NAMES:
            pred, ref = pred_labels == value, ref_labels == value
            sd = surface_distances(pred, ref, SPACING)
            assert sd.hd() == pytest.approx(medpy.hd(pred, ref, SPACING), abs=1e-9)
            assert sd.hd95("pooled") == pytest.approx(medpy.hd95(pred, ref, SPACING), abs=1e-9)
            assert sd.asd() == pytest.approx(medpy.asd(pred, ref, SPACING), abs=1e-9)
            assert sd.assd() == pytest.approx(medpy.assd(pred, ref, SPACING), abs=1e-9)
            # the module functions are the same numbers
            assert hd(pred, ref, SPACING) == sd.hd() and assd(pred, ref, SPACING) == sd.assd()
            assert asd(pred, ref, SPACING) == sd.asd() and hd95(pred, ref, SPACING) == sd.hd95()
            # spacing matters: the same pair in voxel units gives a different HD
            assert sd.hd() != pytest.approx(medpy.hd(pred, ref), rel=1e-3)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI 1.6 passes its own deprecated argument
def test_surface_distances_match_monai_and_record_hd95_variants(acdc_pairs):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    gaps = []
    for pred_labels, ref_labels in acdc_pairs.values():
        for value in ACDC_NAMES:
            pred, ref = pred_labels == value, ref_labels == value
            sd = surface_distances(pred, ref, SPACING)
            p, r = (torch.from_numpy(m[None, None].astype(np.float32)) for m in (pred, ref))
            kw = dict(include_background=True, spacing=list(SPACING))
            monai_hd = monai_metrics.compute_hausdorff_distance(p, r, **kw).item()
            monai_hd95 = monai_metrics.compute_hausdorff_distance(p, r, percentile=95, **kw).item()
            monai_asd = monai_metrics.compute_average_surface_distance(p, r, symmetric=False, **kw).item()
            monai_assd = monai_metrics.compute_average_surface_distance(p, r, symmetric=True, **kw).item()
            # MONAI returns float32, hence the relative tolerance
            assert sd.hd() == pytest.approx(monai_hd, rel=1e-5)
            assert sd.hd95("directed-max") == pytest.approx(monai_hd95, rel=1e-5)
            assert sd.asd() == pytest.approx(monai_asd, rel=1e-5)
            assert sd.assd() == pytest.approx(monai_assd, rel=1e-5)
            assert sd.hd95("directed-max") >= sd.hd95("pooled") - 1e-12  # max of two ≥ pooled, always
            gaps.append(sd.hd95("directed-max") - sd.hd95("pooled"))
    # the definitional gap is real on real data (e.g. RV ES-vs-ED: 14.5 vs 13.29 mm)
    assert max(gaps) > 0.5


def test_simpleitk_hausdorff_agrees_on_real_pairs_but_not_on_holes(acdc_pairs):
    # SimpleITK's filter measures whole objects, not surfaces; on these solid, overlapping
    # structures the maximum lies outside the other object, where the two definitions coincide.
    for pred_labels, ref_labels in acdc_pairs.values():
        for value in ACDC_NAMES:
            pred, ref = pred_labels == value, ref_labels == value
            f = sitk.HausdorffDistanceImageFilter()
            f.Execute(_sitk(pred), _sitk(ref))
            assert hd(pred, ref, SPACING) == pytest.approx(f.GetHausdorffDistance(), abs=1e-9)
    # A filled square vs the same square with a 10×10 hole: the hole's edge is 9 px from the outer
    # surface (our HD 9 × 1.5 mm) but every hole pixel is within 5 px of the ring (SimpleITK 5 × 1.5 mm).
    pred = np.zeros((50, 50), bool)
    pred[10:40, 10:40] = True
    ref = pred.copy()
    ref[20:30, 20:30] = False
    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(_sitk(pred, (1.5, 1.5)), _sitk(ref, (1.5, 1.5)))
    assert hd(pred, ref, (1.5, 1.5)) == pytest.approx(13.5, abs=1e-12)
    assert f.GetHausdorffDistance() == pytest.approx(7.5, abs=1e-9)


def test_shifted_boxes_have_known_hausdorff():
    spacing = (2.5, 1.0, 0.7)
    ref = np.zeros((40, 40, 40), bool)
    ref[10:30, 10:30, 10:30] = True
    # shift by 3 slices along axis 0: the end faces are 3 s0 apart, nothing is farther
    pred = _shift(ref, (3, 0, 0))
    sd = surface_distances(pred, ref, spacing)
    assert sd.hd() == pytest.approx(3 * 2.5, abs=1e-12)
    # flipping axis 0 swaps the two boxes, so the two directed distributions are the same
    assert np.array_equal(np.sort(sd.pred_to_ref), np.sort(sd.ref_to_pred))
    # symmetric shift: both directions have the same distribution, so the two HD95 variants agree
    assert sd.hd95("pooled") == pytest.approx(sd.hd95("directed-max"), abs=1e-12)
    # diagonal shift: the box edge moves by (2 s0, 0, 3 s2)
    sd = surface_distances(_shift(ref, (2, 0, 3)), ref, spacing)
    assert sd.hd() == pytest.approx(math.hypot(2 * 2.5, 3 * 0.7), abs=1e-12)
    # identical masks
    same = surface_distances(ref, ref, spacing)
    assert same.hd() == same.assd() == same.hd95() == 0.0
    assert dice(ref, ref) == jaccard(ref, ref) == 1.0 and voe_percent(ref, ref) == 0.0


def test_concentric_squares_2d():
    # squares of half-width 10 and 6 px, same centre: the corners are farthest apart, 4 px in each axis
    spacing = (1.2, 0.8)
    big, small = np.zeros((41, 41), bool), np.zeros((41, 41), bool)
    big[10:31, 10:31] = True
    small[14:27, 14:27] = True
    sd = surface_distances(small, big, spacing)
    assert sd.hd() == pytest.approx(4 * math.hypot(*spacing), abs=1e-12)
    assert dice(small, big) == pytest.approx(2 * 13**2 / (13**2 + 21**2), abs=1e-15)
    assert rvd_percent(small, big) == pytest.approx(100 * (13**2 - 21**2) / 21**2, abs=1e-12)


def test_empty_mask_convention():
    spacing = (1.0, 1.0)
    empty = np.zeros((20, 20), bool)
    full = empty.copy()
    full[5:15, 5:15] = True
    metrics = [partial(hd, spacing=spacing), partial(hd95, spacing=spacing),
               partial(hd95, spacing=spacing, variant="directed-max"),
               partial(asd, spacing=spacing), partial(assd, spacing=spacing)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from means of empty arrays
        assert math.isnan(dice(empty, empty)) and math.isnan(jaccard(empty, empty))
        assert math.isnan(voe_percent(empty, empty)) and math.isnan(rvd_percent(empty, empty))
        assert all(math.isnan(m(empty, empty)) for m in metrics)
        for pred, ref in ((empty, full), (full, empty)):
            assert dice(pred, ref) == 0.0 and jaccard(pred, ref) == 0.0 and voe_percent(pred, ref) == 100.0
            assert all(m(pred, ref) == math.inf for m in metrics)
        assert rvd_percent(empty, full) == -100.0 and rvd_percent(full, empty) == math.inf


def test_per_label_table(acdc_pairs):
    medpy = pytest.importorskip("medpy.metric.binary")
    pred_labels, ref_labels = acdc_pairs["ES-vs-ED"]
    table = per_label(pred_labels, ref_labels, ACDC_NAMES, dice)
    assert list(table) == ["RV", "MYO", "LV"]
    for value, name in ACDC_NAMES.items():
        assert table[name] == pytest.approx(medpy.dc(pred_labels == value, ref_labels == value), abs=1e-12)
    table = per_label(pred_labels, ref_labels, ACDC_NAMES, partial(hd95, spacing=SPACING))
    assert table["LV"] == pytest.approx(medpy.hd95(pred_labels == 3, ref_labels == 3, SPACING), abs=1e-9)


def test_simpleitk_image_helper_uses_reversed_spacing(acdc_pairs):
    pred_labels, ref_labels = acdc_pairs["ES-vs-ED"]
    pred_image, ref_image = _sitk(pred_labels), _sitk(ref_labels)  # spacing (x, y, z) = (1.5, 1.5, 10)
    sd = surface_distances_from_images(pred_image, ref_image, label=3)
    expected = surface_distances(pred_labels == 3, ref_labels == 3, SPACING)
    assert sd.hd() == expected.hd() and sd.assd() == expected.assd()
    # the pitfall it avoids: GetSpacing() in (x, y, z) order applied to a (z, y, x) array
    wrong = surface_distances(pred_labels == 3, ref_labels == 3, ref_image.GetSpacing())
    assert abs(wrong.hd() - expected.hd()) > 1.0
    moved = _sitk(ref_labels)
    moved.SetOrigin((0.0, 0.0, 5.0))
    with pytest.raises(InputError, match="origin"):
        surface_distances_from_images(pred_image, moved, label=3)


def test_bad_inputs_raise_input_error():
    a = np.zeros((20, 20), bool)
    with pytest.raises(InputError, match="shape"):
        dice(a, np.zeros((20, 21), bool))
    with pytest.raises(InputError, match="0/1"):
        dice(np.full((20, 20), 3), a)
    with pytest.raises(InputError, match="spacing"):
        hd(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="variant"):
        hd95(a, a, (1.0, 1.0), variant="robust")
    with pytest.raises(InputError, match="NaN"):
        psnr(np.full((20, 20), np.nan), np.zeros((20, 20)), 1.0)
    with pytest.raises(InputError, match="window"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)), 1.0)
    with pytest.raises(InputError, match="data_range"):
        ssim(np.zeros((20, 20)), np.zeros((20, 20)), 0.0)


def test_psnr_of_known_noise():
    images = _acdc("patient003_frame01", "image").astype(np.float64)[:4]
    rng = np.random.default_rng(1)
    amplitude = 0.05
    noisy = images + amplitude * rng.choice([-1.0, 1.0], size=images.shape)  # MSE is exactly amplitude²
    expected = 20 * math.log10(1.0 / amplitude)  # 26.0206 dB
    assert psnr(noisy, images, data_range=1.0) == pytest.approx(expected, abs=1e-9)
    assert psnr(noisy, images, data_range=1.0, per_slice=True) == pytest.approx(expected, abs=1e-9)
    assert psnr(noisy[0], images[0], 1.0) == pytest.approx(peak_signal_noise_ratio(images[0], noisy[0], data_range=1.0))
    assert psnr(images, images, 1.0) == math.inf


def _wang_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Independent SSIM (Wang et al. 2004): Gaussian σ 1.5 over 11×11, population moments, mean over the
    pixels whose window lies inside the image."""
    g = partial(gaussian_filter, sigma=1.5, truncate=3.5, mode="reflect")
    mx, my = g(x), g(y)
    vx, vy, cxy = g(x * x) - mx**2, g(y * y) - my**2, g(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def test_ssim_wang_setting():
    images = _acdc("patient003_frame01", "image").astype(np.float64)[3:6]
    rng = np.random.default_rng(2)
    noisy = np.clip(images + rng.normal(0, 0.05, images.shape), 0, 1)
    values = [ssim(a, b, 1.0) for a, b in zip(noisy, images)]
    assert all(0.3 < v < 0.95 for v in values)
    for a, b, v in zip(noisy, images, values):
        assert v == pytest.approx(_wang_ssim(a, b, 1.0), abs=1e-10)
        skimage_default = structural_similarity(a, b, data_range=1.0)  # 7×7 uniform window, sample covariance
        assert abs(v - skimage_default) > 1e-3  # the setting matters
    assert ssim(noisy, images, 1.0) == pytest.approx(np.mean(values), abs=1e-15)
    assert ssim(images[0], images[0], 1.0) == pytest.approx(1.0, abs=1e-12)


def test_paired_difference_tells_a_shift_from_noise():
    """A method 0.1 better on every case plus noise: interval around 0.1, excludes 0, Wilcoxon p small;
    the same noise alone: interval around 0; missing scores are left out; ties counted."""
    rng = np.random.default_rng(1)
    base = rng.uniform(10, 20, 40)
    noise = rng.normal(0, 0.05, 40)
    better = paired_difference(list(base + 0.1 + noise), list(base))
    assert better["n"] == 40 and better["wins"] == 40 and better["mean"] == pytest.approx(0.1 + noise.mean(), abs=1e-4)
    assert better["ci95"][0] < better["mean"] < better["ci95"][1] and better["ci95"][0] > 0.07
    assert better["wilcoxon_p"] < 1e-6
    same = paired_difference(list(base + noise - noise.mean()), list(base))
    assert same["ci95"][0] < 0 < same["ci95"][1] and same["wilcoxon_p"] > 0.3
    gaps = paired_difference([1.0, None, 3.0, float("nan"), 2.0, 4.0], [1.0, 2.0, 2.5, 1.0, 2.5, 3.0])
    assert (gaps["n"], gaps["wins"], gaps["ties"], gaps["losses"]) == (4, 2, 1, 1)
    with pytest.raises(InputError, match="same cases"):
        paired_difference([1.0, 2.0], [1.0])


@pytest.mark.parametrize("patient,es", [("003", "15"), ("005", "13"), ("006", "16")])
def test_anisotropic_surface_metrics_match_medpy_on_more_patients(patient, es):
    """ES vs ED labels of three more patients at 10 x 1.5 x 1.5 mm: every metric is medpy's (pooled HD95),
    Dice/Jaccard are SimpleITK's, and the HD95 variants differ by up to 1.5 mm (patient005 RV)."""
    medpy = pytest.importorskip("medpy.metric.binary")
    ed, es_labels = _acdc(f"patient{patient}_frame01", "label"), _acdc(f"patient{patient}_frame{es}", "label")
    gaps = []
    for value in ACDC_NAMES:
        pred, ref = es_labels == value, ed == value
        sd = surface_distances(pred, ref, SPACING)
        assert sd.hd() == pytest.approx(medpy.hd(pred, ref, SPACING), abs=1e-9)
        assert sd.hd95() == pytest.approx(medpy.hd95(pred, ref, SPACING), abs=1e-9)
        assert sd.asd() == pytest.approx(medpy.asd(pred, ref, SPACING), abs=1e-9)
        assert sd.assd() == pytest.approx(medpy.assd(pred, ref, SPACING), abs=1e-9)
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(_sitk(pred), _sitk(ref))
        assert dice(pred, ref) == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-12)
        assert jaccard(pred, ref) == pytest.approx(overlap.GetJaccardCoefficient(), abs=1e-12)
        # directed-max by hand from the two directed arrays (MONAI's definition, linear interpolation)
        directed = max(np.percentile(sd.pred_to_ref, 95), np.percentile(sd.ref_to_pred, 95))
        assert sd.hd95("directed-max") == pytest.approx(directed, abs=1e-12)
        gaps.append(sd.hd95("directed-max") - sd.hd95("pooled"))
        # the in-plane spacing is honoured: isotropic 1 mm voxels give a different HD95
        assert abs(hd95(pred, ref, (1.0, 1.0, 1.0)) - sd.hd95()) > 0.5
    if patient == "005":
        assert max(gaps) == pytest.approx(12.855 - 11.369, abs=2e-3)  # RV, the figure docs/METRICS.md quotes


def test_empty_masks_give_json_safe_tables():
    """An absent label: nan from the metric, left out (null) by the paired comparison; no NaN in its JSON."""
    import json

    empty, full = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    full[5:15, 5:15] = True
    scores_a = [dice(empty, empty), dice(full, full), hd95(full, empty, (1.0, 1.0)), 0.8]
    scores_b = [dice(empty, empty), dice(full, empty), 3.0, float("inf")]
    assert math.isnan(scores_a[0]) and scores_b[1] == 0.0 and scores_a[2] == math.inf
    result = paired_difference(scores_a, scores_b)
    assert result == {"n": 1, "mean": 1.0, "ci95": None, "wins": 1, "ties": 0, "losses": 0, "wilcoxon_p": None}
    json.dumps(result, allow_nan=False)  # raises on NaN or inf
    with pytest.raises(InputError, match="not a number"):
        paired_difference([0.5, "0.7"], [0.4, 0.6])


def _exact_bca(d: np.ndarray) -> list[float]:
    """95 % BCa interval from the EXACT bootstrap distribution of the mean (every one of the n^n ordered
    resamples), with Efron's bias correction and jackknife acceleration."""
    from itertools import product

    from scipy.special import ndtr, ndtri

    means = d[np.array(list(product(range(len(d)), repeat=len(d))))].mean(axis=1)
    z0 = ndtri(((means < d.mean()).sum() + (means <= d.mean()).sum()) / (2 * len(means)))
    jack = np.array([np.delete(d, i).mean() for i in range(len(d))])
    u = jack.mean() - jack
    a = (u**3).sum() / (6 * (u**2).sum() ** 1.5)
    return [float(np.percentile(means, 100 * ndtr(z0 + (z0 + z) / (1 - a * (z0 + z))))) for z in (ndtri(0.025), ndtri(0.975))]


def _exact_wilcoxon(d: np.ndarray) -> float:
    """Two-sided signed-rank p by enumerating every sign pattern of the non-zero differences (mid-ranks)."""
    from itertools import product

    from scipy.stats import rankdata

    d = d[d != 0]
    ranks = rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    null = np.array([ranks[np.array(signs, bool)].sum() for signs in product((0, 1), repeat=len(d))])
    return float(min(1.0, 2 * min(np.mean(null <= observed + 1e-9), np.mean(null >= observed - 1e-9))))


def test_paired_difference_against_scipy_and_exact_enumeration():
    """A small skewed table: the BCa interval is scipy.stats.bootstrap(method="BCa")'s, close to the exact
    BCa of all 6^6 resamples and clearly not the plain percentile interval; Wilcoxon p is scipy's and the
    exact enumeration's, without and with ties/zeros; fewer than 5 cases: no interval."""
    from scipy import stats

    method = np.array([0.83, 0.80, 0.91, 0.95, 0.71, 0.88])
    baseline = method - np.array([0.02, -0.015, 0.03, 0.25, 0.01, 0.04])
    d = method - baseline
    result = paired_difference(list(method), list(baseline))
    boot = stats.bootstrap((d,), np.mean, method="BCa", n_resamples=10000, random_state=np.random.default_rng(0))
    assert result["ci95"] == [round(boot.confidence_interval.low, 4), round(boot.confidence_interval.high, 4)]
    exact = _exact_bca(d)  # [0.0117, 0.1733]
    assert result["ci95"][0] == pytest.approx(exact[0], abs=0.003) and result["ci95"][1] == pytest.approx(exact[1], abs=0.006)
    percentile = np.percentile(stats.bootstrap((d,), np.mean, method="percentile", n_resamples=10000,
                                               random_state=np.random.default_rng(0)).bootstrap_distribution, 97.5)
    assert result["ci95"][1] - percentile > 0.02  # the BCa correction matters on skewed differences
    assert result["mean"] == pytest.approx(d.mean(), abs=5e-5) and (result["wins"], result["losses"]) == (5, 1)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-3)
    assert result["wilcoxon_p"] == pytest.approx(_exact_wilcoxon(d), rel=1e-3)  # 0.0938
    # ties in |d| and zero differences: zeros dropped (scipy's "wilcox"), p from all sign patterns
    tied = np.array([0.02, -0.02, 0.0, 0.05, 0.05, 0.0, 0.03, 0.01])
    result = paired_difference(list(tied), [0.0] * len(tied))
    assert (result["wins"], result["ties"], result["losses"]) == (5, 2, 1)
    assert result["wilcoxon_p"] == pytest.approx(_exact_wilcoxon(tied), rel=1e-3)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(tied).pvalue, rel=1e-3)
    # 3 or 4 cases: the bootstrap interval would be the data's range (every all-positive set "significant")
    few = paired_difference([1.0, 2.0, 3.0, 5.0], [0.0] * 4)
    assert few["ci95"] is None and few["n"] == 4 and few["wilcoxon_p"] == pytest.approx(0.125, abs=1e-9)
    assert paired_difference([1.0] * 6, [0.5] * 6)["ci95"] is None  # identical differences: no spread
