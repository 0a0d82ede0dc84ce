"""Read a cine short-axis DICOM series (one file per slice and phase, or enhanced multi-frame files) into a
:class:`SliceStack`.

Files are grouped by slice position (``ImagePositionPatient`` projected on the normal of
``ImageOrientationPatient``) and, within a slice, ordered by ``TriggerTime`` (then ``InstanceNumber``):
phase ``k`` is the k-th file of every slice. Each slice keeps its own measured origin, so uneven gaps
and in-plane shifts show up in ``stack.geometry_report()`` instead of being flattened.

We read headers with pydicom rather than SimpleITK's ImageSeriesReader because the series reader
builds one regular volume from a file list: it neither splits phases nor keeps per-slice origins.
An enhanced (multi-frame) file, as newer scanners export cine MR, is read as one image per frame: each
frame's functional groups (per frame, else shared) give what a single-frame header holds, its nominal
cardiac trigger delay standing for the trigger time.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import InputError
from ..geometry.stack import GAP_TOLERANCE_MM, SliceStack

#: two orientations whose direction cosines differ by more than this are different series
ORIENTATION_TOLERANCE = 1e-3


@dataclass
class DicomFile:
    """The header fields of one single-frame DICOM image that geometry and phase sorting need."""

    path: Path
    instance: int | None
    sop_uid: str
    series_uid: str
    position: np.ndarray  # ImagePositionPatient (LPS mm, centre of the first pixel)
    orientation: np.ndarray  # ImageOrientationPatient: row direction then column direction
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    thickness: float | None
    trigger_time: float | None
    shape: tuple[int, int]
    frame: int | None = None  # 0-based frame of an enhanced (multi-frame) file; None: a single-frame file
    rescale: tuple[float, float] | None = None  # a frame's (slope, intercept); None: the file's own
    patient: tuple[str, str] = ("", "")  # (PatientID, StudyInstanceUID): "" where not recorded

    @property
    def label(self) -> str:
        return _image_label(self.path, self.frame)

    def meta(self) -> dict:
        return {
            "instance_number": self.instance,
            "sop_instance_uid": self.sop_uid,
            "path": str(self.path),
            "frame": None if self.frame is None else self.frame + 1,
            "trigger_time_ms": self.trigger_time,
        }


@dataclass
class CineSeries:
    """Files of one orientation, grouped per slice position (ascending along the normal) then by phase."""

    slices: list[list[DicomFile]]
    name: str
    ignored: int = 0  # non-DICOM or non-image files skipped
    copies: int = 0  # repeated copies of one image (same SOPInstanceUID) skipped

    @property
    def phase_counts(self) -> list[int]:
        return [len(s) for s in self.slices]

    @property
    def n_phases(self) -> int:
        return min(self.phase_counts)

    def trigger_times(self) -> list[float | None]:
        """Median trigger time (ms) of each phase over the slices, ``None`` where not recorded."""
        times = []
        for k in range(self.n_phases):
            values = [s[k].trigger_time for s in self.slices if s[k].trigger_time is not None]
            times.append(float(np.median(values)) if values else None)
        return times

    def phase_index(self, phase: int | None = None, trigger_time: float | None = None) -> int:
        """0-based phase from an index or the nearest trigger time (ms); default the first stored (often, not
        always, ED: Sunnybrook SC-HF-I-1 stores end systole first)."""
        if trigger_time is not None:
            times = self.trigger_times()
            known = [(abs(t - trigger_time), k) for k, t in enumerate(times) if t is not None]
            if not known:
                raise InputError(f"{self.name}: the files record no TriggerTime; choose the phase by index")
            return min(known)[1]
        phase = 0 if phase is None else int(phase)
        if not 0 <= phase < self.n_phases:
            raise InputError(
                f"{self.name}: phase {phase} does not exist; every slice has phases 0..{self.n_phases - 1} "
                f"(files per slice: {self.phase_counts})"
            )
        return phase


def scan_dicom(source, name: str = "DICOM series") -> CineSeries:
    """Headers of every DICOM image in a folder (not its subfolders) or a list of files, grouped."""
    paths = _paths(source, name)
    files, ignored = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom validates lazily, e.g. vendor UIDs with leading zeros
        for path in paths:
            header = _header(path)
            if header is None:
                ignored += 1
                continue
            files.extend(_frames(header, path, name) if _frame_count(header) > 1 else [_dicom_file(header, path, name)])
    if not files:
        raise InputError(
            f"{name}: no DICOM images found in {source} ({len(paths)} files looked at, subfolders not searched); "
            "give the folder that holds the .dcm files of one series"
        )
    files, copies = _without_copies(files)
    _check_one_patient(files, name)
    _check_same_orientation(files, name)
    _check_same_grid(files, name)
    normal = np.cross(files[0].orientation[:3], files[0].orientation[3:])
    files.sort(key=lambda f: float(f.position @ normal))
    slices: list[list[DicomFile]] = []
    last = None
    for f in files:
        pos = float(f.position @ normal)
        if last is None or pos - last > GAP_TOLERANCE_MM:
            slices.append([])
        slices[-1].append(f)
        last = pos
    for group in slices:
        group.sort(key=lambda f: (f.trigger_time if f.trigger_time is not None else np.inf, f.instance or 0))
        _check_one_series(group, name, float(group[0].position @ normal))
    return CineSeries(slices=slices, name=name, ignored=ignored, copies=copies)


def _without_copies(files: list[DicomFile]) -> tuple[list[DicomFile], int]:
    """The files without repeats of one image (the same SOPInstanceUID, e.g. a file copied twice), and how many
    were dropped: a copy would otherwise count as one more cardiac phase."""
    seen, kept = set(), []
    for f in files:
        if f.sop_uid and f.sop_uid in seen:
            continue
        seen.add(f.sop_uid)
        kept.append(f)
    return kept, len(files) - len(kept)


def _check_one_series(group: list[DicomFile], name: str, position_mm: float) -> None:
    """One slice position holds the phases of one series. Scanners often store each SAX slice as its own
    series, so several series per folder are fine, but two at one position (a repeated acquisition, two
    cines of the same planes) would be merged into one slice's phases."""
    series = sorted({f.series_uid for f in group})
    if len(series) > 1:
        counts = [sum(f.series_uid == uid for f in group) for uid in series]
        raise InputError(
            f"{name}: {len(series)} series hold images at one slice position ({position_mm:.1f} mm along the "
            f"normal; {counts} images, e.g. {group[0].label} and "
            f"{next(f for f in group if f.series_uid != group[0].series_uid).label}): a repeated or second "
            "acquisition of the same planes; put each series in its own folder"
        )


def dicom_phases(source, name: str = "DICOM series") -> list[dict]:
    """The phases available: ``[{"phase": k, "trigger_time_ms": t}, ...]``."""
    series = scan_dicom(source, name)
    return [{"phase": k, "trigger_time_ms": t} for k, t in enumerate(series.trigger_times())]


def read_dicom_stack(
    source, phase: int | None = None, trigger_time: float | None = None, name: str = "DICOM series",
    series: CineSeries | None = None, decoded: dict | None = None,
) -> SliceStack:  # fmt: skip
    """One phase of a cine series as a :class:`SliceStack` (rescale slope/intercept applied).

    ``phase`` is a 0-based index, ``trigger_time`` (ms) picks the nearest phase; default phase 0.
    ``stack.meta`` holds ``slice_meta`` (instance number, SOP instance UID, path, trigger time per slice),
    ``phase``, ``phases``, ``trigger_times_ms`` and ``warnings`` about the series.
    Several phases of one series: pass ``scan_dicom(source, name)`` as ``series`` (the folder is then not scanned
    again) and one dict as ``decoded`` (multi-frame files decoded once for all phases).
    """
    series = series if series is not None else scan_dicom(source, name)
    k = series.phase_index(phase, trigger_time)
    chosen = [s[k] for s in series.slices]
    decoded = {} if decoded is None else decoded  # a multi-frame file is decoded once for all its frames
    pixels = np.stack([_pixels(f, name, decoded if f.frame is not None else None) for f in chosen])
    first = chosen[0]
    warnings_ = []
    if len(set(series.phase_counts)) > 1:
        warnings_.append(f"slices hold different numbers of phases {series.phase_counts}; phases beyond "
                         f"{series.n_phases} are not offered")
    if series.ignored:
        warnings_.append(f"{series.ignored} non-image or non-DICOM files ignored")
    if series.copies:
        warnings_.append(f"{series.copies} repeated copies of an image (same SOPInstanceUID) ignored")
    thickness = first.thickness
    stack = SliceStack(
        pixels=pixels,
        origins=np.stack([f.position for f in chosen]),
        row_dir=first.orientation[:3],
        col_dir=first.orientation[3:],
        # PixelSpacing is (row spacing = along col_dir, column spacing = along row_dir)
        pixel_spacing=(first.spacing[1], first.spacing[0]),
        thickness=thickness,
        source=name,
        meta={
            "slice_meta": [f.meta() for f in chosen],
            "phase": k,
            "phases": series.n_phases,
            "trigger_times_ms": series.trigger_times(),
            "warnings": warnings_,
            "path": str(source),
        },
    )
    return stack


# ---- helpers --------------------------------------------------------------------------------------
def _paths(source, name: str) -> list[Path]:
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"{name}: file not found: {missing[0]}")
        return paths
    folder = Path(source)
    if not folder.exists():
        raise InputError(f"{name}: file not found: {folder}")
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_file())


def _header(path: Path):
    """The header of a DICOM image file, or ``None`` for anything else (non-DICOM, DICOMDIR, reports)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
        return None
    if "Rows" not in header or "Columns" not in header:
        return None
    return header


def _frame_count(h) -> int:
    try:
        return int(h.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


#: an enhanced image's functional groups -> the single-frame attributes they hold (source, as named in a header)
FRAME_GROUPS = {
    "PlanePositionSequence": {"ImagePositionPatient": "ImagePositionPatient"},
    "PlaneOrientationSequence": {"ImageOrientationPatient": "ImageOrientationPatient"},
    "PixelMeasuresSequence": {"PixelSpacing": "PixelSpacing", "SliceThickness": "SliceThickness"},
    "CardiacSynchronizationSequence": {"NominalCardiacTriggerDelayTime": "TriggerTime"},
    "PixelValueTransformationSequence": {"RescaleSlope": "RescaleSlope", "RescaleIntercept": "RescaleIntercept"},
}


def _frames(h, path: Path, name: str) -> list[DicomFile]:
    """One image per frame of an enhanced (multi-frame) file: each frame's functional groups (per frame, else
    shared) give what a single-frame header holds; frames of one file are told apart by their frame number."""
    count, per_frame = _frame_count(h), h.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != count:
        raise InputError(
            f"{name}: {path.name} holds {count} frames but no per-frame functional groups for them (positions, "
            "orientations): it cannot be placed in 3D; export the series as single-frame files"
        )
    shared = h.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else Dataset()
    images = []
    for k, groups in enumerate(per_frame):
        header = Dataset()
        for keyword in ("Rows", "Columns", "SOPInstanceUID", "SeriesInstanceUID", "PatientID", "StudyInstanceUID"):
            if keyword in h:
                header[keyword] = h[keyword]
        for group, fields in FRAME_GROUPS.items():
            source = groups if group in groups else shared
            items = source.get(group) or []
            for field, target in (fields.items() if items else ()):
                if field in items[0] and items[0][field].value not in (None, ""):
                    setattr(header, target, items[0][field].value)
        header.InstanceNumber = k + 1
        image = _dicom_file(header, path, name, frame=k)
        slope, intercept = (_optional_number(header, tag, image.label, name) for tag in ("RescaleSlope", "RescaleIntercept"))
        rescale = (1.0 if slope is None else slope, 0.0 if intercept is None else intercept)
        images.append(replace(image, sop_uid=f"{image.sop_uid}#{k + 1}", rescale=rescale))
    return images


def _image_label(path: Path, frame: int | None) -> str:
    """How messages name an image: its file, and the frame of a multi-frame file."""
    return path.name if frame is None else f"{path.name} frame {frame + 1}"


def _dicom_file(h, path: Path, name: str, frame: int | None = None) -> DicomFile:
    what = _image_label(path, frame)
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in h]
    if missing:
        raise InputError(
            f"{name}: {what} has no {', '.join(missing)}; it cannot be placed in 3D (is it a derived or "
            "secondary-capture image?)"
        )
    position = _numbers(h, "ImagePositionPatient", 3, what, name)
    orientation = _numbers(h, "ImageOrientationPatient", 6, what, name)
    spacing = _numbers(h, "PixelSpacing", 2, what, name)
    norms = np.linalg.norm(orientation.reshape(2, 3), axis=1)
    if norms.min() < 1e-6 or abs(orientation[:3] @ orientation[3:]) > 1e-2 * norms.prod():
        raise InputError(
            f"{name}: {what} has ImageOrientationPatient {orientation.tolist()}, not two "
            "perpendicular directions (row, column); the slice cannot be placed: fix or remove this file"
        )
    if spacing.min() <= 0:
        raise InputError(
            f"{name}: {what} has PixelSpacing {spacing.tolist()}; pixel sizes must be positive mm: "
            "fix or remove this file"
        )
    orientation[:3] /= norms[0]
    orientation[3:] /= norms[1]
    instance = _optional_number(h, "InstanceNumber", what, name)
    return DicomFile(
        path=path,
        instance=None if instance is None else int(instance),
        sop_uid=str(h.get("SOPInstanceUID", "")),
        series_uid=str(h.get("SeriesInstanceUID", "")),
        position=position,
        orientation=orientation,
        spacing=(float(spacing[0]), float(spacing[1])),
        thickness=_optional_number(h, "SliceThickness", what, name),
        trigger_time=_optional_number(h, "TriggerTime", what, name),
        shape=(int(h.Rows), int(h.Columns)),
        frame=frame,
        patient=(str(h.get("PatientID", "") or "").strip(), str(h.get("StudyInstanceUID", "") or "").strip()),
    )


def _numbers(h, tag: str, count: int, what: str, name: str) -> np.ndarray:
    """Header field ``tag`` as ``count`` finite numbers; anything else raises :class:`InputError` naming the file."""
    try:
        values = np.asarray([float(v) for v in h.get(tag)], dtype=np.float64)
    except (TypeError, ValueError):  # not a list, or not numbers
        values = np.empty(0)
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise InputError(
            f"{name}: {what} has a malformed {tag} {h.get(tag)!s} (needs {count} numbers); fix or remove this file"
        )
    return values


def _optional_number(h, tag: str, what: str, name: str) -> float | None:
    """Header field ``tag`` as one finite number, None when absent or empty; anything else an InputError."""
    value = h.get(tag)
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise InputError(f"{name}: {what} has a malformed {tag} {value!s} (needs a number); fix or remove this file")
    return number


def _check_one_patient(files: list[DicomFile], name: str) -> None:
    """One patient, one study (where the files record them): images of two patients or two studies in one folder
    would otherwise be interleaved into one stack by position. (Not FrameOfReferenceUID: the real Sunnybrook
    cine, one series of one study, carries 24 of them.)"""
    for index, what in ((0, "patients (PatientID"), (1, "studies (StudyInstanceUID")):
        values = sorted({f.patient[index] for f in files if f.patient[index]})
        if len(values) > 1:
            first = next(f for f in files if f.patient[index] == values[0])
            other = next(f for f in files if f.patient[index] == values[1])
            raise InputError(
                f"{name}: the folder mixes {len(values)} {what} {', '.join(values[:3])}"
                f"{', ...' if len(values) > 3 else ''}; e.g. {first.label} and {other.label}): images of another "
                "patient or study; put each patient's series in its own folder"
            )


def _check_same_orientation(files: list[DicomFile], name: str) -> None:
    kinds: list[np.ndarray] = []
    for f in files:
        if not any(np.allclose(f.orientation, o, atol=ORIENTATION_TOLERANCE) for o in kinds):
            kinds.append(f.orientation)
    if len(kinds) > 1:
        listed = "; ".join(str(np.round(o, 3).tolist()) for o in kinds[:4])
        raise InputError(
            f"{name}: the folder mixes {len(kinds)} image orientations (ImageOrientationPatient {listed}), "
            "e.g. short- and long-axis series; put each series in its own folder"
        )


def _check_same_grid(files: list[DicomFile], name: str) -> None:
    grids = {(f.shape, tuple(np.round(f.spacing, 4))) for f in files}
    if len(grids) > 1:
        raise InputError(
            f"{name}: the images differ in size or pixel spacing ({sorted(grids)}); "
            "a stack needs one in-plane grid: put each series in its own folder"
        )


def _pixels(f: DicomFile, name: str, decoded: dict | None = None) -> np.ndarray:
    """The image's pixels, rescaled (a frame's own slope and intercept, else the file's); ``decoded`` keeps
    decoded files (path -> (pixels, slope, intercept)) for the other frames of a multi-frame file."""
    decoded = {} if decoded is None else decoded
    if f.path not in decoded:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f.path)
                array = ds.pixel_array.astype(np.float32)
        except Exception as error:  # pydicom raises many types for unsupported transfer syntaxes
            raise InputError(f"{name}: cannot decode the pixels of {f.path.name} ({error})") from None
        decoded[f.path] = (array, float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
    array, slope, intercept = decoded[f.path]
    if f.frame is not None:
        array = array[f.frame] if array.ndim == 3 and f.frame < len(array) else np.empty((0,))
        slope, intercept = f.rescale or (slope, intercept)
    if array.ndim != 2 or array.shape != f.shape:
        raise InputError(f"{name}: {f.label} is not a grey-level image of {f.shape[0]} x {f.shape[1]} pixels "
                         f"(pixels {array.shape})")  # fmt: skip
    return array * slope + intercept
