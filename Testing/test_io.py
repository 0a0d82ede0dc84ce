"""Readers on real data: Sunnybrook DICOM + expert contours, ACDC HDF5; round trips; bad inputs."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.geometry.stack import SliceStack
from CardiacDiffusionLib.io import (
    acdc_split,
    contour_mask,
    contour_points_lps,
    dicom_phases,
    list_acdc,
    read_acdc,
    read_contour,
    read_dicom_stack,
    read_image,
    read_labels,
    read_stack,
    sunnybrook_labels,
    write_image,
)
from helpers import oblique_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SUNNYBROOK = SHARED / "data" / "sunnybrook-SC-HF-I-1"
DICOM_DIR = SUNNYBROOK / "dicom"
CONTOURS = SUNNYBROOK / "contours"
ACDC = SHARED / "data" / "acdc"

needs_sunnybrook = pytest.mark.skipif(not DICOM_DIR.is_dir(), reason=f"shared Sunnybrook data missing: {DICOM_DIR}")
needs_acdc = pytest.mark.skipif(not ACDC.is_dir(), reason=f"shared ACDC data missing: {ACDC}")


def _header(path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True)


def _phase_files(phase_number: int) -> list[Path]:
    """Sunnybrook files of one cardiac phase (1-based, 8 or 19) from the instance-number rule in SOURCE.txt."""
    files = [p for p in DICOM_DIR.glob("*.dcm") if (int(p.stem) - 1) % 20 + 1 == phase_number]
    return sorted(files, key=lambda p: int(p.stem))


@pytest.fixture(scope="module")
def phase19() -> SliceStack:
    return read_dicom_stack(DICOM_DIR, phase=1, name="sunnybrook")


# ---- Sunnybrook DICOM geometry -------------------------------------------------------------------
@needs_sunnybrook
def test_sunnybrook_true_geometry(phase19):
    stack = phase19
    assert stack.n == 12 and stack.shape2d == (256, 256)
    np.testing.assert_allclose(stack.gaps, 10.0, atol=0.01)
    assert stack.pixel_spacing == (1.367188, 1.367188)
    assert stack.thickness == 10.0
    first = _header(DICOM_DIR / "59.dcm")
    iop = np.array(first.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    np.testing.assert_allclose(stack.normal, normal / np.linalg.norm(normal), atol=1e-6)
    assert abs(stack.normal[2]) < 0.9  # oblique, not an axial stack
    instances = [m["instance_number"] for m in stack.meta["slice_meta"]]
    assert all((n - 1) % 20 + 1 == 19 for n in instances)
    assert sorted(instances) == [int(p.stem) for p in _phase_files(19)]
    for origin, meta in zip(stack.origins, stack.meta["slice_meta"]):
        header = _header(meta["path"])
        assert int(header.InstanceNumber) == meta["instance_number"]
        np.testing.assert_allclose(origin, np.array(header.ImagePositionPatient, float), atol=1e-9)
    # slices run monotonically through the heart: instance slice index (N-1)//20 follows the position
    slice_ids = [(n - 1) // 20 for n in instances]
    assert slice_ids == sorted(slice_ids) or slice_ids == sorted(slice_ids, reverse=True)
    report = stack.geometry_report()
    assert report["uniform_gaps"] and report["warnings"] == [] and report["max_in_plane_shift_mm"] < 0.01


@needs_sunnybrook
def test_transposed_and_turned_stacks_are_the_same_slices_in_space(phase19):
    flipped = phase19.transposed()
    assert np.allclose(flipped.normal, -phase19.normal) and flipped.n == phase19.n
    a = phase19.to_image()
    b = sitk.Resample(flipped.to_image(), a, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0, sitk.sitkFloat32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b), sitk.GetArrayFromImage(a))
    np.testing.assert_array_equal(flipped.transposed().pixels, phase19.pixels)
    turned = phase19.turned()  # 90 degrees in-plane: same voxels, same normal
    assert np.allclose(turned.normal, phase19.normal) and np.allclose(turned.positions, phase19.positions)
    c = sitk.Resample(turned.to_image(), a, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0, sitk.sitkFloat32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(c), sitk.GetArrayFromImage(a))


@needs_sunnybrook
def test_base_and_apex_from_the_anatomy_where_the_geometry_is_true():
    """Sunnybrook's normal points apex -> base (cos -0.96 with the expected base -> apex direction). Its
    heart's area along the normal is a hump in phase 8 (cavity contours only), so the area rule kept the
    description there and flipped phase 19: one acquisition, two answers. The anatomy gives one, and the
    area rule still decides where the orientation is unknown (ACDC files, axis-aligned grids)."""
    from dataclasses import replace

    from CardiacDiffusionLib.geometry.stack import (anatomy_says_normal_points_to_apex, normal_points_to_apex,
                                                    shrinks_along)  # fmt: skip

    for phase in (0, 1):  # Sunnybrook phases 8 and 19
        stack = read_dicom_stack(DICOM_DIR, phase=phase)
        labels, contoured = sunnybrook_labels(stack, CONTOURS)
        stack = stack.with_labels(labels).subset(sorted(c["slice"] for c in contoured))
        assert anatomy_says_normal_points_to_apex(stack) is False and not normal_points_to_apex(stack)
        assert anatomy_says_normal_points_to_apex(stack.transposed()) is True
        by_area = shrinks_along(stack.positions, (stack.labels > 0).reshape(stack.n, -1).sum(1))
        assert by_area == (phase == 0)  # the area rule's two answers
    axis_aligned = replace(stack, row_dir=np.array([1.0, 0, 0]), col_dir=np.array([0, 1.0, 0]))
    assert anatomy_says_normal_points_to_apex(axis_aligned) is None
    area = (axis_aligned.labels > 0).reshape(axis_aligned.n, -1).sum(1)
    assert normal_points_to_apex(axis_aligned) == shrinks_along(axis_aligned.positions, area)  # the labels decide
    assert anatomy_says_normal_points_to_apex(replace(stack, meta={"orientation_known": False})) is None


def _reversed_order(stack: SliceStack) -> SliceStack:
    """The slices' content stored in reverse order, the geometry kept (a through-plane mirror)."""
    from dataclasses import replace

    return replace(stack, pixels=stack.pixels[::-1].copy(), labels=stack.labels[::-1].copy())


@needs_sunnybrook
def test_slices_stored_in_reverse_order_are_warned_about():
    """A through-plane mirror passes every geometry check; the heart's area growing towards the apex as the
    stored geometry places it gives it away. Sunnybrook as read (trend along its apex -> base normal +0.16 /
    +0.68) and MR phantoms as scanned (-0.9..-1.6) are not warned about; phase 19 and the phantom reversed
    are; phase 8 reversed (a hump-shaped area profile, trend -0.16) is too weak to say, and a stack without
    orientation cannot say."""
    from dataclasses import replace

    from CardiacDiffusionLib.geometry.stack import area_trend, slice_order_warning
    from CardiacDiffusionLib.phantoms.mr import MRPhantom
    from CardiacDiffusionLib.phantoms.scanner import acquire_sax

    def warned(stack):
        return [w for w in stack.geometry_report()["warnings"] if "reverse order" in w]

    for phase, trend in ((0, 0.16), (1, 0.68)):
        stack = read_dicom_stack(DICOM_DIR, phase=phase)
        labels, contoured = sunnybrook_labels(stack, CONTOURS)
        stack = stack.with_labels(labels).subset(sorted(c["slice"] for c in contoured))
        assert area_trend(stack.positions, (stack.labels > 0).reshape(stack.n, -1).sum(1)) == pytest.approx(trend, abs=0.01)
        assert not warned(stack) and len(warned(_reversed_order(stack))) == phase
    for seed, phase in ((3, "ES"), (4, "ED")):
        stack = acquire_sax(MRPhantom(seed, phase))
        assert not warned(stack) and slice_order_warning(stack) is None
        assert len(warned(_reversed_order(stack))) == 1 and "mirror image" in warned(_reversed_order(stack))[0]
        assert slice_order_warning(replace(_reversed_order(stack), meta={"orientation_known": False})) is None
        assert slice_order_warning(_reversed_order(stack).subset([2, 3, 4])) is None  # 3 slices: too few to say


@needs_sunnybrook
def test_sunnybrook_phases():
    phases = dicom_phases(DICOM_DIR)
    assert [p["phase"] for p in phases] == [0, 1]
    assert phases[0]["trigger_time_ms"] < phases[1]["trigger_time_ms"]
    default = read_dicom_stack(DICOM_DIR)  # the first phase (lowest trigger time) = file phase 8
    assert all((m["instance_number"] - 1) % 20 + 1 == 8 for m in default.meta["slice_meta"])
    by_time = read_dicom_stack(DICOM_DIR, trigger_time=phases[1]["trigger_time_ms"] + 20)
    assert by_time.meta["phase"] == 1
    with pytest.raises(InputError, match=r"phase 2 does not exist.*0\.\.1"):
        read_dicom_stack(DICOM_DIR, phase=2)


@needs_sunnybrook
def test_sunnybrook_matches_simpleitk_series_reader(phase19):
    files = [m["path"] for m in phase19.meta["slice_meta"]]  # sorted along the normal
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reference = reader.Execute()
    image = phase19.to_image()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))
    via_read_image = read_image(DICOM_DIR, phase=1)  # a DICOM folder through the generic reader
    np.testing.assert_allclose(via_read_image.GetOrigin(), reference.GetOrigin(), atol=1e-3)


@needs_sunnybrook
def test_anisotropic_pixel_spacing_order_matches_simpleitk(tmp_path):
    # PixelSpacing is (between rows, between columns): x spacing is its second value
    for p in _phase_files(19)[:4]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(p)
        ds.PixelSpacing = ["1.0", "2.0"]
        ds.save_as(tmp_path / p.name)
    stack = read_dicom_stack(tmp_path)
    assert stack.pixel_spacing == (2.0, 1.0)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([m["path"] for m in stack.meta["slice_meta"]])
    reference = reader.Execute()
    np.testing.assert_allclose(stack.to_image().GetSpacing(), reference.GetSpacing(), atol=1e-3)


@needs_sunnybrook
def test_uneven_gaps_and_shifts_are_reported_not_flattened(tmp_path):
    files = _phase_files(19)
    gap_dir = tmp_path / "gap"
    gap_dir.mkdir()
    for p in files[:5] + files[6:]:  # drop one middle slice
        shutil.copy(p, gap_dir / p.name)
    stack = read_dicom_stack(gap_dir)
    report = stack.geometry_report()
    assert stack.n == 11 and not report["uniform_gaps"]
    assert sorted(report["slice_gaps_mm"])[-1] == pytest.approx(20.0, abs=0.01)
    with pytest.raises(InputError, match="unevenly spaced"):
        stack.to_image()

    shift_dir = tmp_path / "shift"
    shift_dir.mkdir()
    for p in files:
        shutil.copy(p, shift_dir / p.name)
    moved = shift_dir / files[3].name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(moved)
        row_dir = np.array(ds.ImageOrientationPatient[:3], float)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array(ds.ImagePositionPatient, float) + 3.0 * row_dir]
        ds.save_as(moved)
    (shift_dir / "README.txt").write_text("not a DICOM file")
    shifted = read_dicom_stack(shift_dir)
    assert shifted.n == 12 and shifted.has_shifts()
    assert shifted.geometry_report()["max_in_plane_shift_mm"] == pytest.approx(3.0, abs=0.01)
    assert any("ignored" in w for w in shifted.meta["warnings"])  # the README was skipped, and said so


@needs_sunnybrook
def test_mixed_orientations_and_no_dicom_are_refused(tmp_path):
    files = _phase_files(19)
    for p in files[:3]:
        shutil.copy(p, tmp_path / p.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(files[5])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(tmp_path / "axial.dcm")
    with pytest.raises(InputError, match=r"mixed-folder: the folder mixes 2 image orientations"):
        read_dicom_stack(tmp_path, name="mixed-folder")
    # another patient's or study's images at the same orientation would be interleaved by position
    for tag, said in (("PatientID", "2 patients"), ("StudyInstanceUID", "2 studies")):
        folder = tmp_path / tag
        folder.mkdir()
        for p in files:
            shutil.copy(p, folder / p.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Sunnybrook's UIDs have leading zeros
            ds = pydicom.dcmread(folder / files[4].name)
            setattr(ds, tag, "1.2.3.4" if tag == "StudyInstanceUID" else "another patient")
            ds.save_as(folder / files[4].name)
        with pytest.raises(InputError, match=rf"--sax: the folder mixes {said} .*{files[4].name}.*\): images of another"):
            read_stack(folder, name="--sax")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"--sax: no DICOM images found"):
        read_stack(empty, name="--sax")


@needs_sunnybrook
def test_a_second_series_at_the_same_planes_is_refused_and_copies_are_dropped(tmp_path):
    """Audit: two series of the same planes in one folder were merged into one stack (their images became
    extra phases), and a file copied twice became one more phase."""
    files = sorted(DICOM_DIR.iterdir())
    base = read_dicom_stack(DICOM_DIR)
    for p in files:
        shutil.copy(p, tmp_path / p.name)
    shutil.copy(files[0], tmp_path / "copy_of_the_first.dcm")
    copied = read_dicom_stack(tmp_path)
    assert copied.meta["phases"] == base.meta["phases"] and np.array_equal(copied.pixels, base.pixels)
    assert any("1 repeated copies" in w for w in copied.meta["warnings"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(files[0])
        ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.4", "1.2.3.4.5"  # the same plane, another acquisition
        ds.save_as(tmp_path / "repeat.dcm")  # the real file's own UIDs are not valid ones: pydicom warns
    with pytest.raises(InputError, match=r"2 series hold images at one slice position .* own folder"):
        read_dicom_stack(tmp_path)


def _enhanced(files: list[Path], path: Path, order=None, drop_position_of: int | None = None) -> Path:
    """The single-frame files as one enhanced (multi-frame) MR file: orientation and pixel measures shared,
    position, trigger delay and rescale per frame, frames in ``order``; ``drop_position_of``: a frame without
    a plane position."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sources = [pydicom.dcmread(f) for f in files]
    order = list(range(len(sources))) if order is None else list(order)
    first = sources[0]
    out = Dataset()
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns",
                    "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation"):  # fmt: skip
        if keyword in first:
            out[keyword] = first[keyword]
    out.SOPClassUID, out.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4.1", "1.2.826.0.1.3680043.8.498.1"  # Enhanced MR
    out.NumberOfFrames = len(order)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = first.ImageOrientationPatient
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = first.PixelSpacing
    shared.PixelMeasuresSequence[0].SliceThickness = first.SliceThickness
    out.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k, i in enumerate(order):
        ds, frame = sources[i], Dataset()
        if k != drop_position_of:
            frame.PlanePositionSequence = Sequence([Dataset()])
            frame.PlanePositionSequence[0].ImagePositionPatient = ds.ImagePositionPatient
        frame.CardiacSynchronizationSequence = Sequence([Dataset()])
        frame.CardiacSynchronizationSequence[0].NominalCardiacTriggerDelayTime = ds.TriggerTime
        frame.PixelValueTransformationSequence = Sequence([Dataset()])
        frame.PixelValueTransformationSequence[0].RescaleSlope = 2.0  # the frames' own: applied to them
        frame.PixelValueTransformationSequence[0].RescaleIntercept = -1.0
        frames.append(frame)
    out.PerFrameFunctionalGroupsSequence = Sequence(frames)
    out.PixelData = b"".join(sources[i].pixel_array.astype(sources[i].pixel_array.dtype).tobytes() for i in order)
    out.file_meta = Dataset()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.file_meta.MediaStorageSOPClassUID, out.file_meta.MediaStorageSOPInstanceUID = out.SOPClassUID, out.SOPInstanceUID
    out.save_as(path, enforce_file_format=True)
    return path


@needs_sunnybrook
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # Sunnybrook's vendor UIDs
def test_enhanced_multi_frame_cine_reads_as_its_single_frame_files(tmp_path):
    """Newer scanners export a cine as enhanced (multi-frame) MR. The real Sunnybrook series rewritten as one
    such file, frames shuffled: each phase reads as the single-frame folder does (positions, orientation,
    spacing, trigger times), with the frames' own rescale; copies of the file are dropped like copied files; a
    frame without a position is named."""
    files = sorted(DICOM_DIR.glob("*.dcm"))
    order = np.random.default_rng(0).permutation(len(files))
    (tmp_path / "one").mkdir()
    _enhanced(files, tmp_path / "one" / "cine.dcm", order)
    assert [p["trigger_time_ms"] for p in dicom_phases(tmp_path / "one")] == [p["trigger_time_ms"] for p in
                                                                               dicom_phases(DICOM_DIR)]  # fmt: skip
    for phase in (0, 1):
        single, multi = read_dicom_stack(DICOM_DIR, phase=phase), read_dicom_stack(tmp_path / "one", phase=phase)
        np.testing.assert_allclose(multi.pixels, 2.0 * single.pixels - 1.0)
        np.testing.assert_allclose(multi.origins, single.origins)
        np.testing.assert_allclose(multi.direction, single.direction)
        assert multi.pixel_spacing == single.pixel_spacing and multi.thickness == single.thickness
        assert [m["frame"] for m in multi.meta["slice_meta"]] == [
            1 + int(np.nonzero(order == files.index(Path(m["path"])))[0][0]) for m in single.meta["slice_meta"]]  # fmt: skip
    shutil.copy(tmp_path / "one" / "cine.dcm", tmp_path / "one" / "copy.dcm")
    assert any("repeated copies" in w for w in read_dicom_stack(tmp_path / "one").meta["warnings"])
    (tmp_path / "bad").mkdir()
    _enhanced(files, tmp_path / "bad" / "cine.dcm", drop_position_of=2)
    with pytest.raises(InputError, match="cine.dcm frame 3 has no ImagePositionPatient"):
        read_dicom_stack(tmp_path / "bad")


# ---- Sunnybrook contours ------------------------------------------------------------------------
def test_contour_mask_pixel_centre_convention():
    # x = column, y = row; a pixel is inside when its centre (integer coordinates) is
    square = np.array([[1.5, 0.5], [5.5, 0.5], [5.5, 3.5], [1.5, 3.5]])
    mask = contour_mask(square, (6, 8))
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 3, 2, 5)
    assert mask.sum() == 3 * 4


@needs_sunnybrook
def test_sunnybrook_contours_land_on_the_right_slices(phase19):
    labels, contoured = sunnybrook_labels(phase19, CONTOURS)
    o_instances = sorted(int(p.name.split("-")[2]) for p in (CONTOURS / "o-contours").glob("*.txt"))
    assert sorted(c["instance"] for c in contoured) == o_instances  # phase 19: i- and o-contours on 9 slices
    assert all(c["o"] for c in contoured)
    spacing = phase19.pixel_spacing
    for c in contoured:
        k = c["slice"]
        assert phase19.meta["slice_meta"][k]["instance_number"] == c["instance"]
        pixels = phase19.pixels[k]
        blood, ring = pixels[labels[k] == 1].mean(), pixels[labels[k] == 2].mean()
        assert blood > 1.8 * ring, (c, blood, ring)  # seen 2.2-3.2x (e.g. 247 vs 89)
        area = (labels[k] == 1).sum() * spacing[0] * spacing[1]
        assert 300 < area < 5000, (c, area)  # seen 813-2858 mm^2 in this dilated LV
    uncontoured = [k for k in range(phase19.n) if k not in {c["slice"] for c in contoured}]
    assert not labels[uncontoured].any()

    phase8 = read_dicom_stack(DICOM_DIR, phase=0)
    labels8, contoured8 = sunnybrook_labels(phase8, CONTOURS)
    assert [c["instance"] for c in contoured8] == [48, 68, 88, 108, 128, 148, 168, 188, 208]
    assert set(np.unique(labels8)) == {0, 1}  # no o-contours at phase 8


@needs_sunnybrook
def test_contour_points_in_patient_space_match_simpleitk(phase19):
    image = phase19.to_image()
    k = next(i for i, m in enumerate(phase19.meta["slice_meta"]) if m["instance_number"] == 139)
    points = read_contour(CONTOURS / "i-contours" / "IM-0001-0139-icontour-manual.txt")
    assert points.shape[1] == 2 and len(points) > 50
    lps = contour_points_lps(points, phase19, k)
    expected = [image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(k))) for x, y in points]
    np.testing.assert_allclose(lps, expected, atol=1e-3)
    np.testing.assert_allclose((lps - phase19.origins[k]) @ phase19.normal, 0.0, atol=1e-9)


# ---- ACDC ---------------------------------------------------------------------------------------
@needs_acdc
def test_acdc_reads_and_converts_labels():
    path = ACDC / "patient001_frame01.h5"
    stack = read_acdc(path)
    with h5py.File(path, "r") as f:
        raw = f["label"][()]
        image = f["image"][()]
    np.testing.assert_array_equal(stack.pixels, image)
    for acdc_value, project_value in ((1, 3), (2, 2), (3, 1), (0, 0)):
        assert (stack.labels == project_value).sum() == (raw == acdc_value).sum() > 0
    assert stack.meta["spacing_known"] is False
    assert any("no spacing" in w and "nominal" in w for w in stack.meta["warnings"])
    assert stack.meta["patient"] == 1 and stack.meta["frame"] == 1
    np.testing.assert_allclose(stack.normal, [0, 0, 1])

    measured = read_acdc(path, spacing=(1.5625, 10.0))
    assert measured.meta["spacing_known"] and len(measured.meta["warnings"]) == 1
    assert "no orientation" in measured.meta["warnings"][0] and "mirror" in measured.meta["warnings"][0]
    assert measured.pixel_spacing == (1.5625, 1.5625)
    np.testing.assert_allclose(measured.gaps, 10.0)
    assert read_stack(path).n == stack.n  # the generic stack reader dispatches .h5 to ACDC


@needs_acdc
def test_acdc_listing_and_validation_split():
    entries = list_acdc(ACDC)
    assert len(entries) == 160 and entries[0][:2] == (1, 1)
    train, val = acdc_split(ACDC)
    assert {p for p, _, _ in val} == set(range(61, 81))
    assert not {p for p, _, _ in train} & set(range(61, 81))
    assert len(train) + len(val) == 160 and len(val) == 40


# ---- volumes: round trips and bad inputs ---------------------------------------------------------


@pytest.mark.parametrize("suffix, tol", [(".nrrd", 1e-12), (".mha", 1e-12), (".nii.gz", 1e-5)])
def test_round_trip_keeps_geometry(tmp_path, suffix, tol):
    # NRRD and MHA store geometry as float64 text; NIfTI's header is float32 (hence 1e-5 mm)
    rng = np.random.default_rng(0)
    image = oblique_image(rng.random((4, 5, 6)).astype(np.float32))
    path = write_image(image, tmp_path / "deep" / f"image{suffix}")
    back = read_image(path)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=tol)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=tol)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=tol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))

    labels = oblique_image(rng.integers(0, 4, (4, 5, 6)).astype(np.uint8))
    acdc_path = write_image(labels, tmp_path / f"labels{suffix}")
    converted = sitk.GetArrayFromImage(read_labels(acdc_path, convention="acdc"))
    np.testing.assert_array_equal(converted, np.array([0, 3, 2, 1])[sitk.GetArrayFromImage(labels)])
    stack = read_stack(path, labels_path=write_image(labels, tmp_path / f"project{suffix}"))
    np.testing.assert_array_equal(stack.labels, sitk.GetArrayFromImage(labels))


def test_nifti_gz_is_compressed(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((20, 64, 64), np.float32))
    plain = write_image(image, tmp_path / "a.nii").stat().st_size
    assert write_image(image, tmp_path / "a.nii.gz").stat().st_size < plain / 20


@needs_sunnybrook
def test_dicom_stack_survives_nifti_round_trip(tmp_path, phase19):
    path = write_image(phase19.to_image(), tmp_path / "sax.nii.gz")
    again = read_stack(path)
    np.testing.assert_allclose(again.origins, phase19.origins, atol=1e-3)
    np.testing.assert_allclose(again.normal, phase19.normal, atol=1e-5)
    np.testing.assert_array_equal(again.pixels, phase19.pixels)


def test_bad_inputs_name_the_input(tmp_path):
    with pytest.raises(InputError, match=r"^--sax: file not found: .*nope\.nii\.gz$"):
        read_image(tmp_path / "nope.nii.gz", name="--sax")

    sitk.WriteImage(sitk.Image([8, 6], sitk.sitkFloat32), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match=r"^--lax: .*flat\.nii\.gz is a 2D image"):
        read_image(tmp_path / "flat.nii.gz", name="--lax")
    single = write_image(oblique_image(np.zeros((1, 6, 8), np.float32)), tmp_path / "single.nrrd")
    assert read_image(single).GetSize() == (8, 6, 1)  # one plane with 3D geometry is a fine image...
    with pytest.raises(InputError, match=r"^--sax: .*single\.nrrd holds 1 slice; a SAX stack needs at least 2"):
        read_stack(single, name="--sax")  # ...but not a stack

    bad_labels = write_image(oblique_image(np.array([0, 1, 7], np.uint8).reshape(1, 1, 3)), tmp_path / "l.nrrd")
    with pytest.raises(InputError, match=r"^--labels .*unknown label values \[7\]"):
        read_labels(bad_labels, name="--labels")

    nan = np.ones((3, 4, 5), np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(InputError, match=r"^--sax: .*holds 1 NaN or infinite voxels"):
        read_image(write_image(oblique_image(nan), tmp_path / "nan.mha"), name="--sax")

    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a gzip")
    with pytest.raises(InputError, match=r"^--sax: cannot read .*broken\.nii\.gz"):
        read_image(tmp_path / "broken.nii.gz", name="--sax")
    with pytest.raises(InputError, match=r"unsupported file type 'scan\.png'"):
        (tmp_path / "scan.png").write_bytes(b"png")
        read_image(tmp_path / "scan.png", name="--sax")

    other_grid = oblique_image(np.zeros((3, 4, 5), np.uint8))
    other_grid.SetOrigin((0.0, 0.0, 0.0))
    image_path = write_image(oblique_image(np.zeros((3, 4, 5), np.float32)), tmp_path / "img.nrrd")
    with pytest.raises(InputError, match=r"^--sax labels: .*not on the image's grid"):
        read_stack(image_path, labels_path=write_image(other_grid, tmp_path / "og.nrrd"), name="--sax")


def test_4d_file_needs_a_phase(tmp_path):
    volumes = [sitk.GetImageFromArray(np.full((3, 4, 5), t, np.float32)) for t in range(4)]
    path = write_image(sitk.JoinSeries(volumes), tmp_path / "cine.nii.gz")
    with pytest.raises(InputError, match=r"^--sax: .*cine\.nii\.gz is 4D with 4 cardiac phases; choose one"):
        read_image(path, name="--sax")
    third = read_image(path, phase=2)
    assert third.GetSize() == (5, 4, 3) and float(sitk.GetArrayFromImage(third).mean()) == 2.0
    with pytest.raises(InputError, match=r"phase 9 does not exist"):
        read_image(path, phase=9)


# ---- bad inputs found by the input audit ---------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_truncated_nifti_is_refused_whatever_the_voxel_type(tmp_path, suffix, dtype):
    # ITK reads a cut-off integer file without a word: the lost voxels (here every label from slice 4 on) become 0
    array = np.random.default_rng(0).integers(0, 4, (8, 32, 32)).astype(dtype)  # barely compressible
    path = write_image(oblique_image(array), tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"^--sax labels: .*cut{suffix}\b.* is truncated or corrupt .*re-export it$"):
        read_image(path, name="--sax labels")
    assert path.read_bytes() == data[: len(data) // 2]  # the input is left as it was


def test_a_damaged_nifti_gz_is_refused(tmp_path):
    """A flipped bit in a .nii.gz: same size, another voxel value. ITK and nibabel never check the gzip CRC."""
    import gzip

    array = np.random.default_rng(1).normal(100, 20, (16, 96, 96)).astype(np.float32)  # larger than ITK's buffer
    plain = write_image(oblique_image(array), tmp_path / "plain.nii").read_bytes()
    data = bytearray(gzip.compress(plain, compresslevel=0))  # stored blocks: the voxels' bytes as they are
    data[len(data) // 2] ^= 0x10
    path = tmp_path / "damaged.nii.gz"
    path.write_bytes(bytes(data))
    read = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert read.shape == array.shape and (read != array).sum() == 1  # ITK reads it without a word
    with pytest.raises(InputError, match=r"^--sax: .*damaged\.nii\.gz is truncated or corrupt \(CRC check failed"):
        read_image(path, name="--sax")


@needs_acdc
@pytest.mark.parametrize("case", ["patient029_frame01", "patient049_frame11", "patient001_frame12"])
def test_acdc_numbered_labels_without_the_convention_are_refused(tmp_path, case):
    """LV and RV swapped silently before. Measured over all 160 ACDC volumes: the myocardium borders 98-100 % of
    the LV cavity's edge and 26-46 % of the RV's (cases: the least enclosed LV, the most enclosed RV, few slices)."""
    with h5py.File(ACDC / f"{case}.h5", "r") as f:
        raw = f["label"][()]  # ACDC numbering: 1 RV, 2 MYO, 3 LV
    acdc = write_image(sitk.GetImageFromArray(raw), tmp_path / "acdc.nii.gz")
    with pytest.raises(InputError, match=r"^--labels \(.*\): labels look like ACDC numbering .*label-convention acdc"):
        read_labels(acdc, name="--labels")
    converted = sitk.GetArrayFromImage(read_labels(acdc, convention="acdc"))
    np.testing.assert_array_equal(converted, np.array([0, 3, 2, 1])[raw])
    project = write_image(sitk.GetImageFromArray(converted), tmp_path / "project.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_labels(project)), converted)  # correct: accepted


def _acdc_file(path: Path, image=None, label=None) -> Path:
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((3, 8, 8), np.float32) if image is None else image
        f["label"] = np.zeros((3, 8, 8), np.uint8) if label is None else label
    return path


def test_acdc_hdf5_bad_spacing_and_entries_are_named(tmp_path):
    good = _acdc_file(tmp_path / "good.h5")
    for spacing in [(np.nan, 10.0), (1.5, np.inf), (0.0, 10.0)]:
        with pytest.raises(InputError, match=r"^--sax: the spacing \(--h5-spacing .*must be positive and finite"):
            read_acdc(good, spacing=spacing, name="--sax")
    with h5py.File(tmp_path / "group.h5", "w") as f:
        f.create_group("image")
        f["label"] = np.zeros((3, 8, 8), np.uint8)
    strings = _acdc_file(tmp_path / "strings.h5", image=np.array([b"a", b"b"]))
    for path in (tmp_path / "group.h5", strings):
        with pytest.raises(InputError, match=r"'image' entry is not a numeric array"):
            read_acdc(path, name="--sax")
    odd = _acdc_file(tmp_path / "odd.h5", label=np.full((3, 8, 8), 5, np.uint8))
    with pytest.raises(InputError, match=r"unknown label values \[5\].*1 RV cavity, 2 LV myocardium, 3 LV cavity") as e:
        read_acdc(odd, name="--sax")
    assert "--label-convention" not in str(e.value)  # HDF5 files are always read as ACDC


@needs_sunnybrook
@pytest.mark.parametrize(
    "tag, value, said",
    [
        ("PixelSpacing", ["0", "0"], r"PixelSpacing \[0\.0, 0\.0\]; pixel sizes must be positive"),
        ("PixelSpacing", ["-1.3", "1.3"], r"PixelSpacing \[-1\.3, 1\.3\]; pixel sizes must be positive"),
        ("ImagePositionPatient", "abc\\1\\2", r"malformed ImagePositionPatient .*abc.* \(needs 3 numbers\)"),
        ("ImageOrientationPatient", ["0"] * 6, r"ImageOrientationPatient \[0\.0, .*not two perpendicular"),
        ("TriggerTime", "abc", r"malformed TriggerTime abc \(needs a number\)"),
        ("SliceThickness", "thick", r"malformed SliceThickness thick \(needs a number\)"),
        ("InstanceNumber", "n/a", r"malformed InstanceNumber n/a \(needs a number\)"),
    ],
)
def test_dicom_bad_geometry_tags_are_named_per_file(tmp_path, tag, value, said):
    files = _phase_files(19)[:3]
    for p in files:
        shutil.copy(p, tmp_path / p.name)
    bad = tmp_path / files[1].name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(bad)
    if isinstance(value, str):  # not numbers: stored as text, as a broken exporter would
        ds[tag] = pydicom.DataElement(ds[tag].tag, "LO", value)
    else:
        setattr(ds, tag, value)
    ds.save_as(bad)
    with pytest.raises(InputError, match=rf"^--sax: {bad.name} has .*{said}"):
        read_stack(tmp_path, name="--sax")


def test_nifti_without_orientation_is_read_with_a_warning(tmp_path):
    import nibabel

    bare = nibabel.Nifti1Image(np.zeros((6, 5, 3), np.float32), None)  # no affine: qform and sform codes 0
    bare.header.set_zooms((1.5, 1.5, 10.0))
    nibabel.save(bare, tmp_path / "bare.nii.gz")
    assert nibabel.load(tmp_path / "bare.nii.gz").header["qform_code"] == 0
    stack = read_stack(tmp_path / "bare.nii.gz", name="--sax")
    assert [w for w in stack.meta["warnings"] if "bare.nii.gz stores no orientation" in w and "assumed" in w]
    assert stack.meta["orientation_known"] is False
    # a label file alone (`lma --slices labels.nii.gz`) is told the same
    from CardiacDiffusionLib.cli.lma import read_labelled_stack

    bare_labels = nibabel.Nifti1Image(np.zeros((6, 5, 3), np.uint8), None)
    nibabel.save(bare_labels, tmp_path / "bare_labels.nii.gz")
    alone = read_labelled_stack(str(tmp_path / "bare_labels.nii.gz"), None, "project")
    assert alone.meta["orientation_known"] is False and "stores no orientation" in alone.meta["warnings"][0]
    placed = read_stack(write_image(oblique_image(np.zeros((3, 5, 6), np.float32)), tmp_path / "placed.nii.gz"))
    assert not placed.meta.get("warnings")


def test_unsupported_file_type_lists_hdf5(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"png")
    with pytest.raises(InputError, match=r"unsupported file type 'scan\.png'.*ACDC HDF5 file \(\.h5\)"):
        read_stack(tmp_path / "scan.png", name="--sax")


def test_a_phase_of_a_single_phase_file_is_refused(tmp_path):
    """Audit: --phase on a 3D NIfTI (or an ACDC HDF5 file) was silently ignored."""
    path = tmp_path / "one.nii.gz"
    sitk.WriteImage(sitk.Image([16, 16, 4], sitk.sitkFloat32), str(path))
    assert read_image(path, phase=0).GetSize() == (16, 16, 4)
    with pytest.raises(InputError, match="one 3D volume \\(one phase\\); phase 3 does not exist"):
        read_image(path, name="--sax", phase=3)
    labels = tmp_path / "labels.nii.gz"
    sitk.WriteImage(sitk.Image([16, 16, 4], sitk.sitkUInt8), str(labels))
    assert read_labels(labels, phase=3).GetSize() == (16, 16, 4)  # a 4D cine's chosen phase, labelled in 3D
