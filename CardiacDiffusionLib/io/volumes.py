"""Read and write volumes (NIfTI, NRRD, MHA, DICOM folders) as SimpleITK images in LPS mm.

Every reader checks what a user can get wrong (missing file, corrupt or truncated file, NaNs, a 2D or 4D file
where a 3D one is needed, NIfTI transforms that place the voxels two ways, unknown or ACDC-numbered label values)
and raises :class:`InputError` naming the input.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry.stack import SliceStack, slice_axis
from ..labels import check_not_acdc_numbering, convert_labels

#: file name endings SimpleITK reads for us
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def read_image(path, name: str = "image", phase: int | None = None, one_phase_ok: bool = False) -> sitk.Image:
    """A 3D scalar image (a single plane is 3D with one slice); a DICOM folder gives ``phase``'s volume.

    4D files need ``phase`` (0-based); 2D files are refused because they carry no position in the patient.
    A ``phase`` other than 0 of a 3D file is refused unless ``one_phase_ok`` (labels of the chosen phase).
    """
    return image_reader(path, name, one_phase_ok)(phase)


def image_reader(path, name: str = "image", one_phase_ok: bool = False) -> Callable[[int | None], sitk.Image]:
    """``read(phase)``: :func:`read_image` for several phases of one input, which is read once (a DICOM folder
    scanned, a 4D file decoded and checked on the first call), each phase checked as ``read_image`` checks it."""
    path = _existing(path, name)
    if path.is_dir() or _suffix(path) in DICOM_SUFFIXES:
        stack_of = _dicom_reader(path, name)
        return lambda phase: stack_of(phase).to_image()
    if _suffix(path) not in VOLUME_SUFFIXES:
        raise InputError(
            f"{name}: unsupported file type {path.name!r}; give NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr), "
            "MHA (.mha/.mhd), a DICOM folder or, for a SAX stack, an ACDC HDF5 file (.h5)"
        )
    nifti = _suffix(path) in (".nii", ".nii.gz")
    read: dict = {}  # the file's image and (NIfTI) stored voxels, once read

    def phase_image(phase: int | None) -> sitk.Image:
        if "image" not in read:
            read["image"] = _read_file(path, name, nifti)
        image = read["image"]
        if image.GetDimension() == 4:
            image = _pick_phase(image, phase, name, path)
        elif phase not in (None, 0) and not one_phase_ok:  # labels: a 3D file may hold the chosen phase's labels
            raise InputError(f"{name}: {path} is one 3D volume (one phase); phase {phase} does not exist in it")
        if nifti and "stored" not in read:
            read["stored"] = _nifti_voxels(path, name)
        if nifti:
            _check_nifti_geometry(image, path, name)
        _check_finite(image, name, path, read.get("stored"))
        return image

    return phase_image


def _read_file(path: Path, name: str, nifti: bool) -> sitk.Image:
    """The file as ITK reads it: a 3D or 4D scalar image, else an InputError."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    try:
        if nifti:  # ITK's NIfTI geometry warnings go to stderr; _check_nifti_geometry says what they mean, once
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1].replace("sitk::ERROR: ", "")
        raise InputError(f"{name}: cannot read {path} ({reason}); is the file complete and not corrupt?") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector); "
            "give a scalar (grey-level or label) image"
        )
    if image.GetDimension() == 2:
        raise InputError(
            f"{name}: {path} is a 2D image with no position in the patient; save it as a 3D image with one "
            "slice (size X x Y x 1, with origin and direction) or give the DICOM file"
        )
    if image.GetDimension() not in (3, 4):
        raise InputError(f"{name}: {path} has {image.GetDimension()} dimensions; expected a 3D image")
    return image


def read_labels(path, convention: str = "project", name: str = "labels", phase: int | None = None) -> sitk.Image:
    """An integer label map converted from ``convention`` to the project's (1 LV, 2 MYO, 3 RV), as uint8.

    Project-convention labels whose LV and RV look swapped (ACDC numbering) are refused.
    """
    return labels_reader(path, convention, name)(phase)


def labels_reader(path, convention: str = "project", name: str = "labels") -> Callable[[int | None], sitk.Image]:
    """``read(phase)``: :func:`read_labels` for several phases of one file, read once (:func:`image_reader`)."""
    image_of = image_reader(path, name=name, one_phase_ok=True)

    def read(phase: int | None) -> sitk.Image:
        image = image_of(phase)
        array = sitk.GetArrayFromImage(image)
        converted = convert_labels(array, convention, "project", name=f"{name} ({path})")
        if convention != "acdc":
            check_not_acdc_numbering(converted, name=f"{name} ({path})")
        out = sitk.GetImageFromArray(converted.astype(np.uint8))
        out.CopyInformation(image)
        return out

    return read


def read_stack(
    path,
    labels_path=None,
    convention: str = "project",
    name: str = "SAX stack",
    phase: int | None = None,
    spacing: tuple[float, float] | None = None,
) -> SliceStack:
    """A SAX stack of >= 2 slices from a DICOM folder, an ACDC HDF5 file or a 3D volume, optionally labelled.

    DICOM slices keep their true positions (uneven gaps and shifts are reported by
    ``stack.geometry_report()``). Labels from ``labels_path`` must lie on the stack's grid.
    ``spacing`` (in-plane mm, slice gap mm) is for ACDC HDF5 files, which carry none.
    """
    return StackReader(path, name, spacing)(phase, labels_path, convention)


class StackReader:
    """``read(phase, labels_path, convention)``: :func:`read_stack` for several phases of one input, which is read
    once (a DICOM cine scanned, a 4D file and a 4D label file decoded on first use), each phase's stack the same."""

    def __init__(self, path, name: str = "SAX stack", spacing: tuple[float, float] | None = None):
        self.path, self.name, self.spacing = _existing(path, name), name, spacing
        self.series = None  # a DICOM input's scan (``dicom.CineSeries``: its phases and trigger times)
        self._labels: dict[tuple, Callable] = {}
        if _suffix(self.path) in (".h5", ".hdf5"):
            self._stack = self._acdc
        elif self.path.is_dir() or _suffix(self.path) in DICOM_SUFFIXES:
            self._stack = _dicom_reader(self.path, name)
            self.series = self._stack.series
        else:
            image_of = image_reader(self.path, name)
            self._stack = lambda phase: self._volume(image_of(phase))

    def __call__(self, phase: int | None = None, labels_path=None, convention: str = "project") -> SliceStack:
        stack = self._stack(phase)
        _need_slices(stack.n, self.name, self.path)
        if labels_path is not None:
            key = (str(labels_path), convention)
            if key not in self._labels:
                self._labels[key] = labels_reader(labels_path, convention=convention, name=f"{self.name} labels")
            labels = self._labels[key](phase)
            stack = stack.with_labels(_labels_on_stack(labels, stack, self.name, labels_path, self.path))
        return stack

    def _acdc(self, phase: int | None) -> SliceStack:
        from .acdc import read_acdc

        if phase not in (None, 0):
            raise InputError(f"{self.name}: an ACDC HDF5 file holds one phase (ED or ES); phase {phase} does not "
                             "exist in it")  # fmt: skip
        return read_acdc(self.path, spacing=self.spacing, name=self.name)

    def _volume(self, image: sitk.Image) -> SliceStack:
        _need_slices(image.GetSize()[slice_axis(image)], self.name, self.path)
        stack = SliceStack.from_image(image, source=self.name, file=str(self.path))
        stack.meta["path"] = str(self.path)
        note_missing_orientation(stack, self.path, self.name)
        return stack


def _dicom_reader(path: Path, name: str) -> Callable[[int | None], SliceStack]:
    """``read_dicom_stack`` for several phases of one DICOM folder or file: scanned once, a multi-frame file decoded
    once."""
    from .dicom import read_dicom_stack, scan_dicom

    series, decoded = scan_dicom(path, name), {}

    def read(phase: int | None) -> SliceStack:
        return read_dicom_stack(path, phase=phase, name=name, series=series, decoded=decoded)

    read.series = series
    return read


def volume_phases(path, name: str = "SAX stack") -> int:
    """How many cardiac phases a volume file holds: a 4D file's 4th axis, else 1 (an ACDC HDF5 file: 1; a DICOM
    cine's phases are in ``read_dicom_stack``'s ``meta["trigger_times_ms"]``)."""
    path = _existing(path, name)
    if path.is_dir() or _suffix(path) in (".h5", ".hdf5", *DICOM_SUFFIXES):
        return 1
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{name}: cannot read {path} as an image; give a NIfTI/NRRD/MHA file, a DICOM folder "
                         "or an ACDC HDF5 file") from None  # fmt: skip
    return reader.GetSize()[3] if reader.GetDimension() == 4 else 1


def write_image(image: sitk.Image, path) -> Path:
    """Write ``image`` (creating the parent folder); NIfTI .nii.gz, NRRD and MHA are compressed."""
    path = Path(path)
    if _suffix(path) not in VOLUME_SUFFIXES:
        raise InputError(f"cannot write {path}: use .nii.gz, .nii, .nrrd or .mha")
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=_suffix(path) != ".nii")
    return path


# ---- helpers --------------------------------------------------------------------------------------
def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _existing(path, name: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{name}: file not found: {path}")
    return path


def _need_slices(n: int, name: str, path: Path) -> None:
    if n < 2:
        raise InputError(
            f"{name}: {path} holds {n} slice; a SAX stack needs at least 2 parallel slices "
            "(give the whole short-axis series, not a single plane)"
        )


def _pick_phase(image: sitk.Image, phase: int | None, name: str, path: Path) -> sitk.Image:
    phases = image.GetSize()[3]
    if phase is None and phases == 1:
        phase = 0
    if phase is None:
        raise InputError(
            f"{name}: {path} is 4D with {phases} cardiac phases; choose one (phase 0..{phases - 1}: "
            "--phase of reconstruct, inspect or lma) or save that phase as a 3D file"
        )
    if not 0 <= phase < phases:
        raise InputError(f"{name}: phase {phase} does not exist in {path}; it has phases 0..{phases - 1}")
    size = list(image.GetSize())
    size[3] = 0  # Extract collapses this axis and keeps the 3D part of origin/spacing/direction
    return sitk.Extract(image, size, [0, 0, 0, phase])


def _nifti_voxels(path: Path, name: str) -> np.ndarray:
    """The voxels stored in NIfTI file ``path``, read in full: ITK reads a cut-off file without a word (the
    missing voxels become 0), so a file shorter than its header says is refused here."""
    import nibabel

    try:
        if path.name.lower().endswith(".gz"):
            _read_through(path)
        return np.asanyarray(nibabel.load(str(path)).dataobj.get_unscaled())
    except (EOFError, OSError, ValueError, zlib.error, nibabel.filebasedimages.ImageFileError) as error:
        reason = str(error).strip().splitlines()[0]
        raise InputError(f"{name}: {path} is truncated or corrupt ({reason}); re-export it") from None


def _read_through(path: Path) -> None:
    """Decompress gzip file ``path`` to its end, which checks its CRC: ITK and nibabel stop at the last voxel and
    never look, so a damaged .nii.gz (a flipped bit: different voxels, same size) would be read without a word."""
    with gzip.open(path, "rb") as stream:
        while stream.read(1 << 24):
            pass


def note_missing_orientation(stack: SliceStack, path, name: str) -> None:
    """A stack read from a NIfTI file that stores no orientation: said in ``meta["warnings"]`` and
    ``meta["orientation_known"] = False`` (base/apex then come from the labels, not the anatomy)."""
    path = Path(path)
    if _suffix(path) in (".nii", ".nii.gz") and _nifti_has_no_orientation(path):
        stack.meta["orientation_known"] = False
        stack.meta["warnings"] = [*stack.meta.get("warnings", []), (
            f"{name}: {path.name} stores no orientation (NIfTI qform and sform codes are 0), so the geometry "
            "is assumed (identity directions, origin 0): positions and left/right-dependent results (anterior "
            "vs inferior AHA segments) are not reliable; re-export it with its orientation"
        )]  # fmt: skip


def _nifti_has_no_orientation(path: Path) -> bool:
    """Whether NIfTI file ``path`` stores neither a qform nor an sform (ITK then makes up the geometry)."""
    import nibabel

    header = nibabel.load(str(path)).header
    return int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0


#: NIfTI qform/sform and the geometry ITK reads may differ by float noise, never by more than this (mm)
NIFTI_GEOMETRY_TOLERANCE_MM = 0.1


def _check_nifti_geometry(image: sitk.Image, path: Path, name: str) -> None:
    """Refuse a NIfTI file whose stored transforms place the voxels elsewhere than ITK (and so 3D Slicer and this
    project) reads them: an sform and a qform that disagree (nibabel and FSL use the sform, ITK here the qform), or
    an sform whose voxel sizes differ from pixdim (ITK takes the sizes from pixdim). Compared at the 8 corners."""
    import itertools

    import nibabel

    header = nibabel.load(str(path)).header
    size = image.GetSize()[:3]
    corners = np.array(list(itertools.product(*[(0, s - 1) for s in size])), float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    itk = (corners * image.GetSpacing()) @ direction.T + image.GetOrigin()
    for form in ("sform", "qform"):
        affine, code = getattr(header, f"get_{form}")(coded=True)
        if affine is None or not code:
            continue
        stored = corners @ affine[:3, :3].T + affine[:3, 3]
        stored[:, :2] *= -1  # RAS -> LPS
        off = float(np.linalg.norm(stored - itk, axis=1).max())
        if off > NIFTI_GEOMETRY_TOLERANCE_MM:
            sizes = np.linalg.norm(affine[:3, :3], axis=0)
            pixdim = np.asarray(header.get_zooms()[:3], float)
            why = (f"; voxel sizes {np.round(sizes, 3).tolist()} mm, pixdim {np.round(pixdim, 3).tolist()} mm"
                   if form == "sform" and not np.allclose(sizes, pixdim, atol=1e-3) else "")  # fmt: skip
            raise InputError(
                f"{name}: {path}'s NIfTI header places its voxels in two ways: the {form} (code {int(code)}{why}) and "
                f"the geometry ITK and 3D Slicer read from it differ by up to {off:.1f} mm; re-save it with one "
                "consistent geometry (e.g. nibabel: set the qform from the sform and pixdim from its voxel sizes)"
            )


def _check_finite(image: sitk.Image, name: str, path: Path, stored: np.ndarray | None = None) -> None:
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return
    bad = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))
    if not bad and stored is not None and stored.dtype.kind == "f":
        # ITK's NIfTI reader turns NaN voxels into 0 without a word; count them in the file itself (``stored``).
        bad = int(np.count_nonzero(~np.isfinite(stored)))
    if bad:
        raise InputError(f"{name}: {path} holds {bad} NaN or infinite voxels; fill or mask them before use")


def _labels_on_stack(labels: sitk.Image, stack: SliceStack, name: str, labels_path, image_path) -> np.ndarray:
    """The label array, slice by slice in the stack's order, if ``labels`` lies on the slices of the stack (read
    from ``image_path``, named in the refusal)."""
    # sorted along the normal like ``stack``, and along the same axis (the coarsest, SliceStack.from_image)
    on_slices = SliceStack.from_image(labels, source=f"{name} labels", file=str(labels_path))
    tol = 1e-2  # mm, and direction cosines
    matches = (
        on_slices.pixels.shape == stack.pixels.shape
        and np.allclose(on_slices.row_dir, stack.row_dir, atol=tol)
        and np.allclose(on_slices.col_dir, stack.col_dir, atol=tol)
        and np.allclose(on_slices.pixel_spacing, stack.pixel_spacing, atol=tol)
        and np.allclose(on_slices.origins[0], stack.origins[0], atol=tol)
    )
    if matches and stack.is_uniform() and not stack.has_shifts():
        # a regular stack must match slice by slice; an irregular one cannot be a regular volume anyway,
        # so there the first slice, the in-plane grid and the slice count have to do
        matches = np.allclose(on_slices.origins, stack.origins, atol=tol)
    if not matches:
        raise InputError(
            f"{name} labels: {labels_path} is not on the image's grid ({name} {image_path}: the labels' size "
            f"{labels.GetSize()}, origin, spacing or direction differ); give labels drawn on this series or resample "
            "them to it first"
        )
    return on_slices.pixels.astype(np.uint8)
