"""CT whole-heart phantom and activation (TOS / DENSE strain) phantom: anatomy, HU, timing truths.

Volume ranges are adult end-diastolic values widened for the seeded variation. Over seeds 0-59 at 64^3
the phantom gave LV 83-167 ml, MYO 88-167 ml (mass ~90-175 g), RV 68-152, LA 40-77, RA 46-105,
AO 88-138 (in the 160 mm field of view), PA 27-53, LAA 5-9 ml.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.labels import CT_LABELS
from CardiacDiffusionLib.activation.tos import detect_tos, frame_times
from CardiacDiffusionLib.phantoms.activation import AHA_RING_ORDER, ActivationPhantom, lv_cylindrical_coords, sector_angles
from CardiacDiffusionLib.phantoms.ct import make_ct_phantom

LA, LV, RA, RV, MYO, AO, PA, LAA = 1, 2, 3, 4, 5, 6, 7, 8
VOLUME_RANGES_ML = {
    "LV": (80, 200), "MYO": (80, 200), "RV": (60, 200), "LA": (30, 95),
    "RA": (35, 115), "AO": (60, 180), "PA": (20, 75), "LAA": (2, 12),
}
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def phantoms():
    """(image array, label array, truth) at 64^3 for a few seeds, with and without contrast."""
    out = {}
    for seed in SEEDS:
        for contrast in (True, False):
            img, lab, truth = make_ct_phantom(seed, 64, contrast=contrast)
            out[seed, contrast] = (img, lab, truth)
    return out


def arrays(entry):
    img, lab, truth = entry
    return sitk.GetArrayFromImage(img).astype(float), sitk.GetArrayFromImage(lab), truth


def neighbours(labels: np.ndarray, value: int) -> np.ndarray:
    """Label counts on the one-voxel (6-connected) shell around ``value``."""
    region = labels == value
    shell = ndimage.binary_dilation(region) & ~region
    return np.bincount(labels[shell], minlength=9)


# ---- CT ------------------------------------------------------------------------------------------
def test_ct_geometry_types_and_truth(phantoms):
    img, lab, truth = phantoms[0, True]
    assert img.GetPixelID() == sitk.sitkInt16 and lab.GetPixelID() == sitk.sitkUInt8
    assert img.GetSize() == lab.GetSize() == (64, 64, 64)
    assert np.allclose(img.GetSpacing(), 2.5) and np.allclose(img.GetDirection(), np.eye(3).ravel())
    assert np.allclose(img.GetOrigin(), lab.GetOrigin()) and np.allclose(img.GetOrigin(), truth["origin_mm"])
    json.dumps(truth)
    labels = sitk.GetArrayFromImage(lab)
    voxel_ml = 2.5**3 / 1000
    for value, name in CT_LABELS.items():
        assert truth["volumes_ml"][name] == pytest.approx(np.count_nonzero(labels == value) * voxel_ml, abs=1e-3)
        zyx = np.argwhere(labels == value).mean(0)
        assert np.allclose(truth["centroids_mm"][name], np.array(img.GetOrigin()) + 2.5 * zyx[::-1], atol=0.01)


@pytest.mark.parametrize("seed", SEEDS)
def test_ct_labels_present_single_piece_and_sized(phantoms, seed):
    _, labels, truth = arrays(phantoms[seed, True])
    for value, name in CT_LABELS.items():
        assert ndimage.label(labels == value)[1] == 1, name
        lo, hi = VOLUME_RANGES_ML[name]
        assert lo <= truth["volumes_ml"][name] <= hi, (name, truth["volumes_ml"][name])
    # Nothing but the descending aorta leaves the 160 mm field of view.
    faces = np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()])
    assert set(np.unique(faces)) <= {0, AO}


@pytest.mark.parametrize("seed", SEEDS)
def test_ct_anatomical_arrangement_lps(phantoms, seed):
    """LPS: +x patient left, +y posterior, +z superior."""
    _, labels, truth = arrays(phantoms[seed, True])
    c = {name: np.array(v) for name, v in truth["centroids_mm"].items()}
    assert c["LV"][0] > c["RV"][0] + 15  # RV right of the LV ...
    assert c["RV"][1] < c["LV"][1] - 5  # ... and anterior
    assert c["LA"][1] > c["LV"][1] + 25 and c["LA"][2] > c["LV"][2] + 10  # LA posterior-superior
    assert c["RA"][0] < c["LA"][0] - 25 and c["RA"][0] < c["RV"][0]  # RA rightmost chamber
    assert c["LAA"][0] > c["LA"][0] + 15  # appendage off the LA's left side
    assert c["PA"][2] > c["RV"][2] + 30 and c["PA"][1] > c["RV"][1]  # PA up and back from the RV
    top = {v: np.argwhere(labels == v)[:, 0].max() for v in (LV, LA, AO)}
    assert top[AO] > max(top[LV], top[LA]) + 8  # the arch rises well above the heart
    # The descending aorta runs down behind the LA: AO voxels in the lowest axial slice, posterior to the LA.
    low = np.argwhere(labels[0] == AO)
    assert len(low) and truth["origin_mm"][1] + 2.5 * low[:, 0].mean() > c["LA"][1]


@pytest.mark.parametrize("seed", SEEDS)
def test_ct_adjacency(phantoms, seed):
    _, labels, _ = arrays(phantoms[seed, True])
    lv = neighbours(labels, LV)
    assert set(np.nonzero(lv)[0]) == {LA, MYO, AO}  # mitral valve, wall, aortic valve; never background
    assert lv[MYO] > 0.85 * lv.sum()
    assert neighbours(labels, PA)[RV] > 0  # pulmonary valve
    assert neighbours(labels, LAA)[LA] > 0
    assert neighbours(labels, RA)[RV] > 0  # tricuspid valve
    assert neighbours(labels, RV)[MYO] > 0  # septum


@pytest.mark.parametrize("seed", SEEDS)
def test_ct_hounsfield_units(phantoms, seed):
    img, labels, truth = arrays(phantoms[seed, True])
    native, labels_native, _ = arrays(phantoms[seed, False])
    assert np.array_equal(labels, labels_native)
    core = {v: ndimage.binary_erosion(labels == v, iterations=1) for v in CT_LABELS}
    mean = {v: img[core[v]].mean() for v in CT_LABELS}
    for v in (LV, LA, AO, LAA):
        assert 330 <= mean[v] <= 470, (v, mean[v])
    for v in (RV, RA, PA):
        assert 260 <= mean[v] <= 400, (v, mean[v])
    assert 90 <= mean[MYO] <= 160
    assert mean[LV] - mean[MYO] > 180
    mean_n = {v: native[core[v]].mean() for v in CT_LABELS}
    for v in (LV, LA, RV, RA, AO, PA, LAA):
        assert 25 <= mean_n[v] <= 55, (v, mean_n[v])
    assert 40 <= mean_n[MYO] <= 65 and abs(mean_n[MYO] - mean_n[LV]) < 20
    # Noise ~15 HU in the blood pool core (smoothing happens before the noise).
    deep = ndimage.binary_erosion(labels == LV, iterations=3)
    assert 11 <= img[deep].std() <= 20
    # Surroundings: lung, mediastinal fat, bone all present.
    outside = img[labels == 0]
    assert np.mean(outside < -700) > 0.2
    assert np.any((outside > -130) & (outside < -70))
    assert np.any(outside > 500)


def test_ct_reproducible_and_varies_by_seed(phantoms):
    img, lab, truth = make_ct_phantom(1, 64)
    ref = arrays(phantoms[1, True])
    assert np.array_equal(sitk.GetArrayFromImage(img), ref[0]) and np.array_equal(sitk.GetArrayFromImage(lab), ref[1])
    vols = [arrays(phantoms[s, True])[2]["volumes_ml"] for s in SEEDS]
    assert len({round(v["LV"]) for v in vols}) == len(SEEDS)
    a, b = arrays(phantoms[0, True])[1], arrays(phantoms[1, True])[1]
    lv_dice = 2 * np.sum((a == LV) & (b == LV)) / (np.sum(a == LV) + np.sum(b == LV))
    assert lv_dice < 0.97


def test_ct_grid_size_keeps_anatomy_size():
    """The default 160 mm field of view keeps volumes in ml across grid sizes; 32^3 still holds all labels."""
    _, small, t32 = make_ct_phantom(4, 32)
    _, _, t64 = make_ct_phantom(4, 64)
    assert set(np.unique(sitk.GetArrayFromImage(small))) == set(range(9))
    for name in ("LV", "MYO", "RV", "LA", "RA", "AO", "PA"):
        assert t32["volumes_ml"][name] == pytest.approx(t64["volumes_ml"][name], rel=0.1), name
    img, _, t = make_ct_phantom(4, (40, 36, 32), spacing=(4.0, 4.5, 5.0))
    assert img.GetSize() == (40, 36, 32) and np.allclose(img.GetSpacing(), (4.0, 4.5, 5.0))


def test_ct_bad_input():
    with pytest.raises(InputError, match="size"):
        make_ct_phantom(0, 4)
    with pytest.raises(InputError, match="spacing"):
        make_ct_phantom(0, 32, spacing=-1)


def test_ct_lv_frame_matches_anatomy(phantoms):
    """The LV frame in the truth puts the RV-facing myocardium (septum) at 0..120 degrees."""
    _, labels, truth = arrays(phantoms[0, True])
    frame = truth["lv_frame"]
    septum = np.argwhere((labels == MYO) & ndimage.binary_dilation(labels == RV))
    points = np.array(truth["origin_mm"]) + 2.5 * septum[:, ::-1]
    angle, height = lv_cylindrical_coords(points, frame["base_center_mm"], frame["apex_mm"],
                                          frame["rv_insertion_anterior_dir"])
    deg = np.rad2deg(angle)
    deg = np.where(deg > 300, deg - 360, deg)
    assert 40 < np.median(deg) < 80  # mid-septum is 60 degrees from the anterior insertion
    assert np.mean((deg > -15) & (deg < 135)) > 0.9
    assert height.min() > -0.2 and height.max() < 1.0
    # An LBBB map painted on this myocardium: septum early, lateral (opposite the RV) late.
    myo = np.argwhere(labels == MYO)
    a, h = lv_cylindrical_coords(np.array(truth["origin_mm"]) + 2.5 * myo[:, ::-1], frame["base_center_mm"],
                                 frame["apex_mm"], frame["rv_insertion_anterior_dir"])
    tos = ActivationPhantom(0).tos_at(a, h)
    far_from_rv = ndimage.distance_transform_edt(labels != RV, sampling=2.5)[tuple(myo.T)]
    assert tos[far_from_rv > 60].mean() - tos[far_from_rv < 5].mean() > 50


# ---- activation ---------------------------------------------------------------------------------
def wall_means(tos: np.ndarray) -> tuple[float, float]:
    """(septal, lateral) mean TOS of 18-sector matrices: septum 0-120 deg, lateral wall 180-300 deg."""
    return tos[:, 0:6].mean(), tos[:, 9:15].mean()


@pytest.mark.parametrize("seed", range(6))
def test_lbbb_septum_early_lateral_late(seed):
    phantom = ActivationPhantom(seed, "lbbb")
    tos = phantom.sector_tos(3)
    septal, lateral = wall_means(tos)
    assert lateral - septal > 60
    assert 15 <= tos.min() <= 40 and 110 <= tos.max() <= 170
    by_sector = tos.mean(0)
    assert np.rad2deg(sector_angles(18)[np.argmin(by_sector)]) < 120  # earliest sector in the septum
    assert 150 < np.rad2deg(sector_angles(18)[np.argmax(by_sector)]) < 300  # latest posterolateral
    # Smooth: neighbouring sectors differ by far less than the total spread; periodic in angle.
    assert np.abs(np.diff(tos, axis=1, append=tos[:, :1])).max() < 0.25 * (tos.max() - tos.min())
    assert phantom.tos_at(0.0, 0.4) == pytest.approx(phantom.tos_at(2 * np.pi, 0.4))


@pytest.mark.parametrize("seed", range(6))
def test_normal_pattern_synchronous(seed):
    tos = ActivationPhantom(seed, "normal").sector_tos(4)
    assert tos.max() - tos.min() < 40 and 17 <= tos.min() and tos.max() < 80
    assert abs(np.subtract(*wall_means(tos))) < 25


@pytest.mark.parametrize("pattern", ["lbbb", "normal"])
@pytest.mark.parametrize("frame_ms,n_frames", [(17.0, 40), (25.0, 30)])
def test_strain_onsets_encode_tos(pattern, frame_ms, n_frames):
    """A classical onset detector recovers the sector TOS from the noisy matrices within one frame."""
    for seed in range(4):
        phantom = ActivationPhantom(seed, pattern)
        strain = phantom.strain_matrices(3, 18, n_frames, frame_ms)
        truth = np.maximum(phantom.sector_tos(3), frame_ms)  # no onset can be seen before the first frame
        error = detect_tos(strain, frame_ms) - truth
        assert np.abs(error).mean() < frame_ms
        assert np.percentile(np.abs(error), 95) < 1.5 * frame_ms
        if pattern == "lbbb":  # the detector sees the timing: a rolled map (septum <-> lateral) is far off
            rolled = np.roll(truth, 9, axis=1)
            assert np.abs(detect_tos(strain, frame_ms) - rolled).mean() > max(40.0, 4 * np.abs(error).mean())


@pytest.mark.parametrize("pattern", ["lbbb", "normal"])
def test_strain_shapes(pattern):
    phantom = ActivationPhantom(3, pattern)
    strain = phantom.strain_matrices(3, 18, 40, 17.0)
    tos = phantom.sector_tos(3)
    t = frame_times(40, 17.0)
    assert strain.shape == (3, 18, 40)
    peaks = strain.min(-1)
    assert np.all((peaks > -0.22) & (peaks < -0.13))
    peak_time = t[strain.argmin(-1)]
    assert np.all(peak_time > tos + 100)  # shortening builds up after onset
    assert np.abs(strain[..., -5:]).mean() < 0.01  # back to ~0 in diastole
    before = np.where(t[None, None, :] < tos[..., None] - 17, strain, np.nan)
    if pattern == "lbbb":
        late = tos > 110
        assert late.any() and np.nanmax(before[late], axis=-1).min() > 0.01  # pre-stretch of late segments
    else:
        assert np.nanmax(np.abs(before)) < 0.02  # flat before onset


def test_activation_reproducible_truth_and_errors():
    a, b = ActivationPhantom(5), ActivationPhantom(5)
    assert np.array_equal(a.strain_matrices(2), b.strain_matrices(2))
    assert not np.allclose(a.sector_tos(2), ActivationPhantom(6).sector_tos(2))
    truth = json.loads(json.dumps(a.truth()))
    assert truth["pattern"] == "lbbb" and 200 <= truth["late_angle_deg"] <= 250
    assert truth["aha_ring_order"] == list(AHA_RING_ORDER)
    assert a.sector_tos(2, heights=[0.3, 0.6]).shape == (2, 18)
    with pytest.raises(InputError):
        ActivationPhantom(0, "rbbb")
    with pytest.raises(InputError):
        a.sector_tos(2, heights=[0.5])
