"""The analytic MR phantom and the virtual scanner: sizes, phases, geometry and write-out.

Sizes are measured on the 1 mm voxel truth, not read back from the parameters. The key geometry
check resamples the voxel truth onto each LAX plane and the SAX stack (nearest neighbour) and
compares it with the labels the phantom evaluates analytically at the pixel centres.

Nearest-neighbour sampling of a 1 mm volume moves a boundary by ``E|d.n| = 0.25 mm`` on average
(``d`` uniform in the voxel), so a label band ``w`` mm wide cannot reach a Dice above about
``1 - 0.25 / w``: ~0.97 for a 9 mm myocardium, ~0.99 for a 45 mm cavity. The thresholds below
sit just under that limit, and a second check asks the resampled labels to equal the analytic
labels at the nearest voxel centre pixel for pixel, which any geometry error (origin, direction,
spacing, index order) breaks.
"""

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.geometry.planes import (
    grid_points,
    index_to_physical,
    physical_to_continuous_index,
    plane_image,
    resample_to,
)
from CardiacDiffusionLib.phantoms.fields import rician
from CardiacDiffusionLib.phantoms.mr import MRPhantom
from CardiacDiffusionLib.phantoms.scanner import acquire_sax, make_subject, write_subject

#: minimum Dice (1 mm truth, nearest neighbour) per label: cavity, myocardium, RV
MIN_DICE = {1: 0.98, 2: 0.95, 3: 0.95}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def subjects():
    return {phase: make_subject(0, phase) for phase in ("ED", "ES")}


@pytest.fixture(scope="module")
def truths():
    """More 1 mm truth volumes (seed 0 comes with ``subjects``)."""
    return {key: MRPhantom(*key).truth_volume() for key in ((1, "ED"), (1, "ES"), (2, "ED"))}


def _truth(subjects, truths, seed, phase):
    return subjects[phase].truth_labels if seed == 0 else truths[(seed, phase)]


def measure(phantom: MRPhantom, truth: sitk.Image) -> dict:
    """Mid-ventricular cavity diameter and wall thickness, base-apex length, volumes: from the voxels."""
    s = phantom.shape
    centre = phantom.base_center + 0.5 * s.l_endo * phantom.long_axis
    mid = plane_image(centre, phantom.rv_direction, phantom.e2, (240, 240), (0.5, 0.5))
    sax = sitk.GetArrayFromImage(resample_to(truth, mid, labels=True))
    cavity = 2 * np.sqrt((sax == 1).sum() * 0.25 / np.pi)  # equivalent diameters
    outer = 2 * np.sqrt(np.isin(sax, (1, 2)).sum() * 0.25 / np.pi)
    array = sitk.GetArrayFromImage(truth)

    def along_axis(mask):
        points = index_to_physical(truth, np.argwhere(mask)[:, ::-1].astype(float))
        return (points - phantom.base_center) @ phantom.long_axis

    z_lv, z_rv = along_axis(np.isin(array, (1, 2))), along_axis(array == 3)
    voxel_ml = np.prod(truth.GetSpacing()) / 1000.0
    return {
        "diameter": cavity,
        "wall": (outer - cavity) / 2,
        "length": z_lv.max() - z_lv.min() + truth.GetSpacing()[0],
        "rv_end": z_rv.max(),
        "volumes": {name: (array == v).sum() * voxel_ml for v, name in ((1, "LV"), (2, "MYO"), (3, "RV"))},
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sizes_in_range(subjects, truths, seed):
    phantom = MRPhantom(seed, "ED")
    m = measure(phantom, _truth(subjects, truths, seed, "ED"))
    assert 45.0 <= m["diameter"] <= 55.0
    assert 7.0 <= m["wall"] <= 11.0
    assert 80.0 <= m["length"] <= 95.0
    assert m["rv_end"] < m["length"] - 15.0  # the RV cavity stops well short of the apex
    volumes = phantom.volumes_ml()
    for name, value in m["volumes"].items():  # LPS grid and heart-frame grid agree
        assert value == pytest.approx(volumes[name], rel=0.015)
    s = phantom.shape  # and both agree with the analytic cap integrals
    lv = phantom.cap_volume(s.r_endo, s.l_endo, s.l_epi) / 1000.0
    myo = phantom.cap_volume(s.r_epi, s.l_epi, s.l_epi) / 1000.0 - lv
    assert m["volumes"]["LV"] == pytest.approx(lv, rel=0.015)
    assert m["volumes"]["MYO"] == pytest.approx(myo, rel=0.02)


@pytest.mark.parametrize("seed", [0, 1])
def test_es_against_ed(subjects, truths, seed):
    ed, es = MRPhantom(seed, "ED"), MRPhantom(seed, "ES")
    m_ed = measure(ed, _truth(subjects, truths, seed, "ED"))
    m_es = measure(es, _truth(subjects, truths, seed, "ES"))
    ef = 1 - m_es["volumes"]["LV"] / m_ed["volumes"]["LV"]
    assert 0.50 <= ef <= 0.65
    assert ef == pytest.approx(ed.target_ef, abs=0.01)  # the analytic EF the ES shape was solved for
    assert m_es["volumes"]["MYO"] == pytest.approx(m_ed["volumes"]["MYO"], rel=0.03)
    assert m_es["wall"] > m_ed["wall"] + 2.0
    assert 0.85 <= m_es["length"] / m_ed["length"] <= 0.97
    np.testing.assert_allclose(es.apex, ed.apex, atol=1e-9)
    np.testing.assert_allclose(es.long_axis, ed.long_axis, atol=1e-12)


def test_oblique_long_axis_and_intensities(subjects):
    phantom = subjects["ED"].phantom
    u = phantom.long_axis  # base -> apex: patient left (+x), anterior (-y), inferior (-z)
    assert u[0] > 0.3 and u[1] < -0.3 and u[2] < -0.3
    truth = subjects["ED"].truth_labels
    array = sitk.GetArrayFromImage(truth)
    array = array[::2, ::2, ::2]
    clean = phantom.intensity_at(grid_points(truth)[::2, ::2, ::2], bias=False)
    assert 0.8 <= np.median(clean[array == 1]) <= 1.0
    assert 0.8 <= np.median(clean[array == 3]) <= 1.0
    assert 0.25 <= np.median(clean[array == 2]) <= 0.35
    around = clean[array == 0]
    assert (around < 0.1).mean() > 0.01 and (around > 0.75).mean() > 0.01  # lung and fat in view
    # Rician noise on zero signal is Rayleigh: mean sigma * sqrt(pi / 2)
    noise = rician(np.zeros(200_000, np.float32), 0.04, np.random.default_rng(0))
    assert noise.mean() == pytest.approx(0.04 * np.sqrt(np.pi / 2), rel=0.01)


def test_reproducible_and_different_across_seeds():
    a = acquire_sax(MRPhantom(4, "ED"), matrix=48, pixel_mm=4.0, shifts_mm=2.0)
    b = acquire_sax(MRPhantom(4, "ED"), matrix=48, pixel_mm=4.0, shifts_mm=2.0)
    c = acquire_sax(MRPhantom(5, "ED"), matrix=48, pixel_mm=4.0, shifts_mm=2.0)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.meta["true_shifts_lps_mm"] == b.meta["true_shifts_lps_mm"]
    assert not np.allclose(a.origins, c.origins)
    assert (a.labels != c.labels).mean() > 0.01
    assert MRPhantom(4).shape != MRPhantom(5).shape


def test_rv_wraps_the_septum(subjects):
    phantom, truth = subjects["ED"].phantom, subjects["ED"].truth_labels
    array = sitk.GetArrayFromImage(truth)
    rv, cavity = array == 3, array == 1
    touching = ndimage.binary_dilation(rv) & (array == 2)
    assert touching.sum() > 1000  # the RV cavity lies on the myocardium...
    assert not (ndimage.binary_dilation(rv) & cavity).any()  # ...never on the LV cavity
    local = phantom.to_heart(grid_points(truth)[touching])
    assert np.median(local[:, 0]) > 0.5 * phantom.shape.r_epi  # on the septal side
    angles = np.degrees(np.arctan2(local[:, 1], local[:, 0]))
    assert np.percentile(angles, 99) - np.percentile(angles, 1) > 120  # wrapping it as a crescent


def _check_against_truth(truth: sitk.Image, labels: sitk.Image, name: str):
    """Dice of the resampled truth vs analytic labels, and pixel equality at the nearest voxel centres."""
    phantom_labels = sitk.GetArrayFromImage(labels)
    resampled = sitk.GetArrayFromImage(resample_to(truth, labels, labels=True))
    for value, threshold in MIN_DICE.items():
        if (phantom_labels == value).sum() >= 100:
            score = dice(resampled == value, phantom_labels == value)
            assert score >= threshold, f"{name} label {value}: Dice {score:.4f}"
    index = np.rint(physical_to_continuous_index(truth, grid_points(labels)))
    inside = np.all((index >= 0) & (index < np.array(truth.GetSize())), axis=-1)
    return index_to_physical(truth, index), inside, resampled


@pytest.mark.parametrize("phase", ["ED", "ES"])
def test_truth_resampled_onto_lax_matches_analytic_labels(subjects, phase):
    subject = subjects[phase]
    phantom = subject.phantom
    for view, labels in subject.lax_labels.items():
        nearest, inside, resampled = _check_against_truth(subject.truth_labels, labels, view)
        expected = np.where(inside, phantom.labels_at(nearest), 0)
        assert (expected == resampled).mean() > 0.999, view
    # the planes hold the long axis; 4ch goes through the RV, 2ch is perpendicular, 3ch at 110-135 deg
    normals = {v: np.array(im.GetDirection()).reshape(3, 3)[:, 2] for v, im in subject.lax_labels.items()}
    origins = {v: np.array(im.GetOrigin()) for v, im in subject.lax_labels.items()}
    for view, n in normals.items():
        for point in (phantom.base_center, phantom.apex):
            assert abs((point - origins[view]) @ n) < 1e-6, view
    assert abs(normals["4ch"] @ phantom.rv_direction) < 1e-9
    assert abs(normals["2ch"] @ normals["4ch"]) < 1e-9
    angle = np.degrees(np.arccos(abs(normals["3ch"] @ normals["2ch"])))
    assert 45.0 <= angle <= 70.0  # planes at 110-135 deg about the axis from 2ch, i.e. 45-70 deg apart
    present = {v: set(np.unique(sitk.GetArrayFromImage(im)).tolist()) for v, im in subject.lax_labels.items()}
    assert present["4ch"] == {0, 1, 2, 3} and present["3ch"] == {0, 1, 2, 3}
    assert 3 not in present["2ch"]


@pytest.mark.parametrize("phase", ["ED", "ES"])
def test_sax_geometry_and_labels(subjects, phase):
    subject = subjects[phase]
    phantom, sax = subject.phantom, subject.sax
    assert np.linalg.norm(sax.normal - phantom.long_axis) < 1e-6
    np.testing.assert_allclose(sax.gaps, 10.0, atol=1e-6)
    assert 10 <= sax.n <= 12
    assert sax.pixel_spacing == (1.5625, 1.5625) and sax.shape2d == (128, 128)
    levels = np.array(sax.meta["levels_mm"])
    ed_length = MRPhantom(0, "ED").shape.l_epi
    assert levels[0] <= 0.0 and levels[-1] >= ed_length  # base to beyond the apex
    labels = sax.to_image(labels=True)
    nearest, inside, resampled = _check_against_truth(subject.truth_labels, labels, "SAX")
    expected = np.where(inside, phantom.labels_at(nearest), 0)
    assert (expected == resampled).mean() > 0.999
    # the SAX labels are the analytic labels at the pixel centres
    np.testing.assert_array_equal(sax.labels, phantom.labels_at(grid_points(labels)))


def test_breath_hold_shifts_are_in_the_truth_not_in_the_geometry():
    phantom = MRPhantom(0, "ED")
    plain = acquire_sax(phantom, gap_mm=8.0, matrix=64, pixel_mm=3.0, noise_sigma=0.0)
    moved = acquire_sax(phantom, gap_mm=8.0, matrix=64, pixel_mm=3.0, noise_sigma=0.0, shifts_mm=4.0)
    np.testing.assert_allclose(plain.gaps, 8.0, atol=1e-6)
    np.testing.assert_array_equal(moved.origins, plain.origins)  # the scanner reports nominal positions
    assert not moved.has_shifts()
    shifts = np.array(moved.meta["true_shifts_lps_mm"])
    sizes = np.linalg.norm(shifts, axis=1)
    assert sizes.max() <= 4.0 and sizes.mean() > 1.0
    np.testing.assert_allclose(shifts @ moved.normal, 0.0, atol=1e-9)  # in-plane
    points = grid_points(moved.to_image())
    for k in range(moved.n):  # slice k shows the phantom moved by shifts[k]
        np.testing.assert_array_equal(moved.labels[k], phantom.labels_at(points[k] - shifts[k]))
    assert (moved.labels != plain.labels).any()


def test_write_subject(tmp_path):
    subject = make_subject(3, "ES", matrix=64, pixel_mm=3.125)
    written = write_subject(subject, tmp_path)
    sax = subject.sax
    files = sorted(written["sax_dicom"].glob("*.dcm"))
    assert len(files) == sax.n
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.InstanceNumber == k + 1
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], sax.origins[k], atol=1e-5)
        orientation = [float(v) for v in ds.ImageOrientationPatient]
        np.testing.assert_allclose(orientation, [*sax.row_dir, *sax.col_dir], atol=1e-7)
        assert [float(v) for v in ds.PixelSpacing] == [3.125, 3.125]
        assert float(ds.TriggerTime) == subject.phantom.trigger_times_ms["ES"] > 0
        pixels = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(pixels, sax.pixels[k], atol=float(ds.RescaleSlope))
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in files}) == 1
    # a DICOM series reader rebuilds the stack's volume geometry
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(written["sax_dicom"])))
    volume = reader.Execute()
    expected = sax.to_image()
    np.testing.assert_allclose(volume.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(volume.GetSpacing(), expected.GetSpacing(), atol=1e-4)
    # NIfTI files keep the geometry; truth.json is plain JSON
    lax = sitk.ReadImage(str(written["lax_3ch_labels"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lax), sitk.GetArrayFromImage(subject.lax_labels["3ch"]))
    np.testing.assert_allclose(lax.GetOrigin(), subject.lax_labels["3ch"].GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(lax.GetDirection(), subject.lax_labels["3ch"].GetDirection(), atol=1e-5)
    truth = json.loads(written["truth"].read_text())
    assert truth["seed"] == 3 and truth["phase"] == "ES" and len(truth["sax"]["levels_mm"]) == sax.n


def test_bad_input():
    with pytest.raises(InputError, match="phase"):
        MRPhantom(0, "MS")
    with pytest.raises(InputError, match="gap"):
        acquire_sax(MRPhantom(0), gap_mm=0.0)
    with pytest.raises(InputError, match="shift"):
        acquire_sax(MRPhantom(0), shifts_mm=-1.0)


def test_half_millimetre_truth_reproduces_lax_labels_by_dice():
    """The issue's check, Dice >= 0.98 per label on every LAX plane, holds with a 0.5 mm truth.

    At 1 mm the myocardium and RV reach 0.97-0.99 only: nearest-neighbour resampling of a 1 mm grid
    moves each boundary by up to 0.5 mm, which costs a 7-11 mm wall about 1 - 0.25 / width of Dice.
    """
    from CardiacDiffusionLib.reconstruction.lax_check import lax_dice

    subject = make_subject(0)
    truth = subject.phantom.truth_volume(0.5)
    for view, labels in subject.lax_labels.items():
        scores = {k: v for k, v in lax_dice(truth, labels).items() if v is not None}
        assert min(scores.values()) >= 0.98, (view, scores)
        assert ("RV" in scores) == (view != "2ch")
