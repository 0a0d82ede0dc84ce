"""Volume readers and stack geometry against odd orientations and storage forms.

The real Sunnybrook SAX stack (oblique, expert LV contours) is re-written as NRRD (LPS and RAS space), MHA/MHD,
NIfTI (qform only / sform only / both), slice axis first, in-plane axes swapped and axes flipped; every form must
give a reconstruction whose voxels lie where the input's acquired voxels lie in the patient (SimpleITK
TransformIndexToPhysicalPoint), with the acquired labels unchanged, and the same 3D result in world space.
Broken geometry (sform against qform or pixdim, sheared axes) is refused naming the file; generated volumes
cover what needs no data.
"""

from __future__ import annotations

import itertools
import shutil
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.geometry.stack import SliceStack, slice_axis
from CardiacDiffusionLib.io import read_dicom_stack, read_image, read_labels, read_stack, sunnybrook_labels
from CardiacDiffusionLib.reconstruction.volume import reconstruct
from helpers import oblique_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SUNNYBROOK = SHARED / "data" / "sunnybrook-SC-HF-I-1"
needs_sunnybrook = pytest.mark.skipif(not (SUNNYBROOK / "dicom").is_dir(), reason=f"shared data missing: {SUNNYBROOK}")
SPACING = 2.0  # output slice spacing (mm): the 10 mm slices fall on the output grid


# ---- writers of the storage forms ------------------------------------------------------------------
def _affine_lps(image: sitk.Image) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return affine


def _nifti(image: sitk.Image, path: Path, qform: bool, sform: bool, sform_shift=(0.0, 0.0, 0.0), pixdim=None) -> Path:
    """A NIfTI file by nibabel with the chosen transforms (RAS), pixdim as the voxel sizes unless given."""
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ _affine_lps(image)
    nifti = nibabel.Nifti1Image(sitk.GetArrayFromImage(image).transpose(2, 1, 0), None)
    nifti.set_qform(ras if qform else None, code=1 if qform else 0)
    shifted = ras.copy()
    shifted[:3, 3] += sform_shift
    nifti.set_sform(shifted if sform else None, code=2 if sform else 0)
    nifti.header.set_zooms(pixdim or image.GetSpacing())
    nibabel.save(nifti, str(path))
    return path


def _nrrd(image: sitk.Image, path: Path, space: str = "left-posterior-superior", axes=None) -> Path:
    """A raw NRRD written by hand: RAS space negates the x and y of its directions and origin; ``axes`` (3x3,
    columns in LPS mm) replaces the image's scaled direction."""
    array = sitk.GetArrayFromImage(image)
    axes = _affine_lps(image)[:3, :3] if axes is None else np.asarray(axes, float)
    origin = np.array(image.GetOrigin())
    if space == "right-anterior-superior":
        axes, origin = axes * np.array([-1.0, -1.0, 1.0])[:, None], origin * np.array([-1.0, -1.0, 1.0])
    kind = {np.dtype(np.float32): "float", np.dtype(np.uint8): "uchar"}[array.dtype]
    vector = lambda v: "(" + ",".join(repr(float(x)) for x in v) + ")"  # noqa: E731
    header = (f"NRRD0004\ntype: {kind}\ndimension: 3\nspace: {space}\nsizes: {' '.join(map(str, image.GetSize()))}\n"
              f"space directions: {' '.join(vector(axes[:, k]) for k in range(3))}\nkinds: domain domain domain\n"
              f"endian: little\nencoding: raw\nspace origin: {vector(origin)}\n\n")  # fmt: skip
    path.write_bytes(header.encode() + np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())
    return path


def _sitk_form(transform):
    def write(image: sitk.Image, path: Path, suffix: str = ".nrrd") -> Path:
        out = path.with_suffix(suffix)
        sitk.WriteImage(transform(image), str(out))
        return out

    return write


FORMS = {
    "nrrd lps (SimpleITK)": lambda im, p: _sitk_form(lambda x: x)(im, p, ".nrrd"),
    "nrrd lps (by hand)": lambda im, p: _nrrd(im, p.with_suffix(".nrrd")),
    "nrrd ras": lambda im, p: _nrrd(im, p.with_suffix(".nrrd"), "right-anterior-superior"),
    "mha": lambda im, p: _sitk_form(lambda x: x)(im, p, ".mha"),
    "mhd": lambda im, p: _sitk_form(lambda x: x)(im, p, ".mhd"),
    "nifti qform only": lambda im, p: _nifti(im, p.with_suffix(".nii"), qform=True, sform=False),
    "nifti sform only": lambda im, p: _nifti(im, p.with_suffix(".nii"), qform=False, sform=True),
    "nifti qform and sform": lambda im, p: _nifti(im, p.with_suffix(".nii"), qform=True, sform=True),
    "slice axis first": _sitk_form(lambda x: sitk.PermuteAxes(x, [2, 0, 1])),
    "slice axis second": _sitk_form(lambda x: sitk.PermuteAxes(x, [0, 2, 1])),
    "in-plane axes swapped": _sitk_form(lambda x: sitk.PermuteAxes(x, [1, 0, 2])),
    "apex first (slice axis flipped)": _sitk_form(lambda x: sitk.Flip(x, [False, False, True])),
    "row axis flipped": _sitk_form(lambda x: sitk.Flip(x, [True, False, False])),
    "every axis flipped": _sitk_form(lambda x: sitk.Flip(x, [True, True, True])),
}


# ---- the real stack --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sunnybrook(tmp_path_factory):
    """Phase 19 of the Sunnybrook cine (12 oblique slices 10 mm apart) with the expert LV labels, as 3D images, and
    their shape reconstruction (the reference in world space)."""
    stack = read_dicom_stack(SUNNYBROOK / "dicom", phase=1, name="sunnybrook")
    labels, _ = sunnybrook_labels(stack, SUNNYBROOK / "contours")
    stack = stack.with_labels(labels)
    image, label_image = stack.to_image(), stack.to_image(labels=True)
    return image, label_image, reconstruct(SliceStack.from_image(image, label_image), "shape", SPACING)


def _world(image: sitk.Image) -> np.ndarray:
    """LPS mm of every voxel, in the array's (z, y, x) order; checked against SimpleITK at the 8 corners."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(s) for s in reversed(size)), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    points = (ijk * image.GetSpacing()) @ np.array(image.GetDirection()).reshape(3, 3).T + image.GetOrigin()
    for corner in itertools.product(*[(0, s - 1) for s in size]):
        flat = np.ravel_multi_index(corner[::-1], size[::-1])
        np.testing.assert_allclose(points[flat], image.TransformIndexToPhysicalPoint(corner), atol=1e-9)
    return points


def _at(output: sitk.Image, points: np.ndarray) -> tuple[np.ndarray, float]:
    """The output's voxel nearest each LPS point (as index triples) and the largest distance (mm) to it."""
    direction = np.array(output.GetDirection()).reshape(3, 3)
    index = np.round(((points - output.GetOrigin()) @ np.linalg.inv(direction).T) / output.GetSpacing()).astype(int)
    assert np.all((index >= 0) & (index < np.array(output.GetSize()))), "an acquired voxel lies outside the output"
    back = (index * output.GetSpacing()) @ direction.T + output.GetOrigin()
    return index, float(np.linalg.norm(back - points, axis=1).max())


def _values(output: sitk.Image, index: np.ndarray) -> np.ndarray:
    return sitk.GetArrayViewFromImage(output)[index[:, 2], index[:, 1], index[:, 0]]


def _dice_in_world(labels: sitk.Image, reference: sitk.Image) -> dict[int, float]:
    on_reference = sitk.GetArrayFromImage(sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor))
    ref = sitk.GetArrayFromImage(reference)
    return {v: 2 * np.sum((on_reference == v) & (ref == v)) / (np.sum(on_reference == v) + np.sum(ref == v))
            for v in (1, 2)}  # fmt: skip


@needs_sunnybrook
@pytest.mark.parametrize("form", FORMS)
def test_every_storage_form_keeps_the_acquired_voxels_in_place(sunnybrook, tmp_path, form):
    image, labels, reference = sunnybrook
    image_path = FORMS[form](image, tmp_path / "sax")
    labels_path = FORMS[form](labels, tmp_path / "sax_labels")
    stack = read_stack(image_path, labels_path=labels_path, name="--sax")
    assert stack.n == 12 and stack.labels.sum() == sitk.GetArrayViewFromImage(labels).sum()
    result = reconstruct(stack, "shape", SPACING)

    written = sitk.ReadImage(str(image_path))  # the voxels as the file places them
    index, off = _at(result.image, _world(written))
    assert off < 1e-3  # mm: every acquired voxel has an output voxel at its position
    kept = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path))).reshape(-1)
    assert np.array_equal(_values(result.labels, index), kept)  # the acquired labels, unchanged
    intensities = sitk.GetArrayFromImage(written).reshape(-1)
    assert np.abs(_values(result.image, index) - intensities).max() < 0.05  # of 0..1100 (positions rounded 1e-3 mm)
    # the same 3D result in world space: voxel for voxel where the output's normal runs as the reference's; where
    # it runs the other way (a left-handed file) the 2 mm grid starts at the other end, 0.0003 mm off, and shape
    # interpolation's exact ties flip (Sunnybrook: 301 of 78 669 labelled voxels, Dice LV 0.9986, MYO 0.9948)
    dice = _dice_in_world(result.labels, reference.labels)
    assert min(dice.values()) > 0.99, dice
    if np.allclose(result.labels.GetDirection(), reference.labels.GetDirection(), atol=1e-5):
        assert np.array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(reference.labels))
        np.testing.assert_allclose(result.labels.GetOrigin(), reference.labels.GetOrigin(), atol=1e-3)


@needs_sunnybrook
def test_apex_first_and_base_first_files_give_one_volume(sunnybrook, tmp_path):
    image, labels, reference = sunnybrook
    flip = lambda x: sitk.Flip(x, [False, False, True])  # noqa: E731  (same voxels, slices stored apex first)
    results = []
    for name, f in (("base_first", lambda x: x), ("apex_first", flip)):
        sitk.WriteImage(f(image), str(tmp_path / f"{name}.nii.gz"))
        sitk.WriteImage(f(labels), str(tmp_path / f"{name}_labels.nii.gz"))
        stack = read_stack(tmp_path / f"{name}.nii.gz", labels_path=tmp_path / f"{name}_labels.nii.gz")
        results.append(reconstruct(stack, "shape", SPACING))
    first, flipped = (sitk.ReadImage(str(tmp_path / f"{n}.nii.gz")) for n in ("base_first", "apex_first"))
    assert first.GetDirection()[8] == pytest.approx(-flipped.GetDirection()[8])  # the files run opposite ways
    for out in ("image", "labels"):
        a, b = (getattr(r, out) for r in results)
        assert a.GetSize() == b.GetSize() and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
        assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@needs_sunnybrook
def test_a_stack_saved_slice_axis_first_is_read_along_its_slices(sunnybrook, tmp_path, capsys):
    # before: its third axis (256 columns 1.37 mm apart) was taken for the slices, without a word
    image, labels, reference = sunnybrook
    path = tmp_path / "zfirst.nrrd"
    sitk.WriteImage(sitk.PermuteAxes(image, [2, 0, 1]), str(path))
    assert sitk.ReadImage(str(path)).GetSize() == (12, 256, 256) and slice_axis(sitk.ReadImage(str(path))) == 0
    plain = tmp_path / "labels.nrrd"  # labels in the usual layout: the same voxels in the patient, so accepted
    sitk.WriteImage(labels, str(plain))
    stack = read_stack(path, labels_path=plain, name="--sax")
    assert stack.n == 12 and stack.gaps == pytest.approx(np.full(11, 10.0), abs=1e-3)
    assert any("along its first axis (9.99997 mm apart)" in w and str(path) in w for w in stack.meta["warnings"])
    assert np.array_equal(sitk.GetArrayFromImage(reconstruct(stack, "shape", SPACING).labels),
                          sitk.GetArrayFromImage(reference.labels))  # fmt: skip
    out = tmp_path / "out"
    assert main(["reconstruct", "--method", "shape", "--sax", str(path), "--sax-labels", str(plain),
                 "--spacing", str(SPACING), "--out", str(out)]) == 0  # fmt: skip
    assert "warning: --sax: " in capsys.readouterr().out
    written = sitk.ReadImage(str(out / "reconstruction_labels.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(reference.labels))


def test_slice_axis_needs_a_clearly_coarsest_axis():
    image = sitk.Image(8, 9, 10, sitk.sitkFloat32)
    for spacing, axis in (((1.5, 1.5, 10.0), 2), ((10.0, 1.5, 1.5), 0), ((1.5, 8.0, 1.5), 1),
                          ((1.2, 1.9, 1.0), 2), ((1.5, 1.5, 1.5), 2), ((10.0, 10.0, 1.5), 2)):  # fmt: skip
        image.SetSpacing(spacing)
        assert slice_axis(image) == axis, spacing


# ---- geometry that cannot be trusted -----------------------------------------------------------------


def _oblique_8mm(array: np.ndarray) -> sitk.Image:
    return oblique_image(array, spacing=(1.4, 1.4, 8.0))


def test_nifti_whose_transforms_disagree_with_what_itk_reads_is_refused(tmp_path, capfd):
    image = _oblique_8mm(np.random.default_rng(0).random((6, 20, 24)).astype(np.float32))
    good = read_image(_nifti(image, tmp_path / "sform_only.nii", qform=False, sform=True))
    np.testing.assert_allclose(good.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(good.GetOrigin(), image.GetOrigin(), atol=1e-4)

    # the sform 20 mm from the qform: nibabel/FSL place the voxels by the sform, ITK and Slicer by the qform
    shifted = _nifti(image, tmp_path / "shifted.nii", qform=True, sform=True, sform_shift=(20.0, 0.0, 0.0))
    with pytest.raises(InputError, match=r"^--sax: .*shifted\.nii's NIfTI header places its voxels in two ways: "
                                         r"the sform \(code 2\) .* differ by up to 20\.0 mm; re-save it"):
        read_image(shifted, name="--sax")
    # an sform without a matching pixdim: ITK took 1 mm voxels for 1.4 x 1.4 x 8 mm ones (40 mm off at the far end)
    sizes = _nifti(image, tmp_path / "pixdim.nii", qform=False, sform=True, pixdim=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match=r"sform \(code 2; voxel sizes \[1\.4, 1\.4, 8\.0\] mm, pixdim \[1\.0, 1\.0, "
                                         r"1\.0\] mm\) and the geometry ITK .* differ by up to 37\.0 mm"):
        read_labels(sizes, name="--sax labels")
    capfd.readouterr()
    assert main(["inspect", "--sax", str(sizes)]) == 2
    said = capfd.readouterr()
    assert said.out == "" and said.err.count("\n") == 1 and said.err.startswith(f"error: --sax: {sizes}'s NIfTI")


def test_sheared_axes_are_refused_or_said(tmp_path):
    image = _oblique_8mm(np.random.default_rng(1).random((5, 16, 18)).astype(np.float32))
    axes = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    skew = axes.copy()
    skew[:, 1] += 0.3 * axes[:, 0]  # columns leaning on the rows: not an image grid
    path = _nrrd(image, tmp_path / "skew.nrrd", axes=skew)
    with pytest.raises(InputError, match=r"^--sax: .*skew\.nrrd has in-plane axes 73\.\d deg apart, not 90 .*resample"):
        read_stack(path, name="--sax")
    tilt = axes.copy()
    tilt[:, 2] += 2.0 * axes[:, 0] / np.linalg.norm(axes[:, 0])  # each slice 2 mm further along the rows
    path = _nrrd(image, tmp_path / "tilt.nrrd", axes=tilt)
    stack = read_stack(path, name="--sax")
    assert any("slice axis tilted 14.0 deg" in w and "tilt.nrrd" in w for w in stack.meta["warnings"])
    written = sitk.ReadImage(str(path))
    for k in range(5):  # every slice at its true position: the first pixel where SimpleITK puts it
        np.testing.assert_allclose(stack.origins[k], written.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-9)
    assert stack.shifts[:, 0] == pytest.approx(2.0 * np.arange(5), abs=1e-6)


# ---- a missing DICOM slice, label and intensity storage ---------------------------------------------
@needs_sunnybrook
def test_a_missing_dicom_slice_keeps_every_other_slice_in_place(tmp_path):
    files = sorted((p for p in (SUNNYBROOK / "dicom").glob("*.dcm") if (int(p.stem) - 1) % 20 + 1 == 19),
                   key=lambda p: int(p.stem))  # fmt: skip
    for p in files[:5] + files[6:]:
        shutil.copy(p, tmp_path / p.name)
    stack = read_dicom_stack(tmp_path)
    labels, _ = sunnybrook_labels(stack, SUNNYBROOK / "contours")
    result = reconstruct(stack.with_labels(labels), "shape", 1.0)
    assert sorted(stack.gaps)[-1] == pytest.approx(20.0, abs=0.01)
    for k, meta in enumerate(stack.meta["slice_meta"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            acquired = sitk.ReadImage(meta["path"])  # one DICOM file, placed by SimpleITK
        index, off = _at(result.image, _world(acquired))
        assert off < 2e-3  # mm (DICOM positions are rounded to 1e-4..1e-3 mm)
        assert np.abs(_values(result.image, index) - sitk.GetArrayFromImage(acquired).reshape(-1)).max() < 0.1
        assert np.array_equal(_values(result.labels, index), labels[k].reshape(-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert int(pydicom.dcmread(files[5], stop_before_pixels=True).InstanceNumber) not in [
            m["instance_number"] for m in stack.meta["slice_meta"]]  # fmt: skip


@needs_sunnybrook
def test_labels_stored_as_floats(sunnybrook, tmp_path):
    image, labels, _ = sunnybrook
    sitk.WriteImage(image, str(tmp_path / "sax.nii.gz"))
    as_float = sitk.Cast(labels, sitk.sitkFloat32)  # 0.0 / 1.0 / 2.0
    sitk.WriteImage(as_float, str(tmp_path / "float.nii.gz"))
    stack = read_stack(tmp_path / "sax.nii.gz", labels_path=tmp_path / "float.nii.gz")
    assert np.array_equal(stack.labels, sitk.GetArrayFromImage(labels))
    sitk.WriteImage(as_float * 0.9999, str(tmp_path / "resampled.nii.gz"))
    with pytest.raises(InputError, match=r"^--sax labels \(.*resampled\.nii\.gz\): label image holds non-integer"):
        read_stack(tmp_path / "sax.nii.gz", labels_path=tmp_path / "resampled.nii.gz", name="--sax")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_nan_and_inf_voxels_are_refused_in_every_format(tmp_path, suffix):
    array = np.random.default_rng(2).random((4, 8, 9)).astype(np.float32)
    array[1, 2, 3], array[2, 3, 4] = np.nan, np.inf
    path = tmp_path / f"bad{suffix}"
    sitk.WriteImage(_oblique_8mm(array), str(path))
    with pytest.raises(InputError, match=rf"^--sax: .*bad{suffix} holds 2 NaN or infinite voxels"):
        read_stack(path, name="--sax")


def test_a_4d_file_gives_the_chosen_phase_in_place(tmp_path):
    phases = [_oblique_8mm(np.full((4, 6, 7), float(t), np.float32)) for t in range(3)]
    path = tmp_path / "cine.nrrd"
    sitk.WriteImage(sitk.JoinSeries(phases), str(path))
    stack = read_stack(path, phase=2, name="--sax")
    assert float(stack.pixels.mean()) == 2.0
    np.testing.assert_allclose(stack.origins[0], phases[0].GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(stack.direction, np.array(phases[0].GetDirection()).reshape(3, 3), atol=1e-12)
    with pytest.raises(InputError, match=r"^--sax: .*cine\.nrrd is 4D with 3 cardiac phases; choose one"):
        read_stack(path, name="--sax")
    assert SliceStack.from_image(phases[1]).n == 4
