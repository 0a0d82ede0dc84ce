"""A virtual MR scanner for :class:`~.mr.MRPhantom`: plans SAX and LAX views from the LV long axis.

Planning is done once on the ED heart and reused for ES, as in a cine acquisition (the planes
stay fixed in the scanner, the heart moves under them).

- SAX: slices perpendicular to the long axis, base to apex (the stack normal is the long axis),
  ``gap_mm`` apart, starting a random fraction of a gap above the base. The image of a slice is
  the average of ``sub_planes`` planes across ``thickness_mm`` (partial volume), times the coil
  bias, with Rician noise; its labels are the analytic labels of the centre plane.
- Breath-hold misregistration (``shifts_mm > 0``): during slice ``k``'s breath-hold the heart is
  displaced in-plane by ``d_k`` (uniform in a disc of radius ``shifts_mm``), so the slice shows the
  phantom at ``x - d_k`` while the scanner still reports the nominal geometry ``x``, exactly as a
  real scanner does. ``d_k`` is recorded only in the truth (``stack.meta`` and ``truth.json``);
  the labels of a slice follow its image (they are what an expert would draw on it).
- LAX: single planes containing the long axis: 4ch through the RV centre (``rv_direction``),
  2ch perpendicular to it, 3ch through the LV outflow (``outflow_angle`` from 2ch). Labels are
  evaluated analytically at the pixel centres, never resampled from the voxel truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry.planes import grid_points, plane_image
from ..geometry.stack import SliceStack
from ..utils.jsonfile import write_json
from .fields import rician
from .mr import PHASES, MRPhantom

LAX_VIEWS = ("2ch", "3ch", "4ch")
#: rng streams (with the seed) so that every acquisition is reproducible and independent
_PLAN, _NOISE_SAX, _SHIFTS, _NOISE_LAX = 1, 2, 3, 4


def _sub_plane_offsets(thickness: float, sub_planes: int) -> np.ndarray:
    """Centres of ``sub_planes`` equal parts of the slice thickness (a box slice profile)."""
    return ((np.arange(sub_planes) + 0.5) / sub_planes - 0.5) * thickness


def _acquire(phantom: MRPhantom, points: np.ndarray, normal: np.ndarray, thickness: float, sub_planes: int):
    """Partial-volume image (mean over the thickness) and centre-plane labels at ``points``."""
    image = np.mean(
        [phantom.intensity_at(points + o * normal) for o in _sub_plane_offsets(thickness, sub_planes)], axis=0
    )
    return image.astype(np.float32), phantom.labels_at(points)


def _check(value: float, name: str, low: float, high: float) -> float:
    if not low < float(value) <= high:
        raise InputError(f"scanner {name} must be in ({low}, {high}], got {value}")
    return float(value)


def _check_matrix(matrix: int) -> int:
    if int(matrix) != matrix or not 8 <= matrix <= 1024:
        raise InputError(f"scanner matrix must be a whole number of pixels in [8, 1024], got {matrix}")
    return int(matrix)


def sax_frame(phantom: MRPhantom) -> tuple[np.ndarray, np.ndarray]:
    """SAX ``row_dir, col_dir``: the normal ``row x col`` is the long axis (base -> apex).

    Seen from the base (along the normal), the RV is on the image's right and the anterior wall up.
    """
    return phantom.rv_direction, np.cross(phantom.long_axis, phantom.rv_direction)


def acquire_sax(
    phantom: MRPhantom,
    gap_mm: float = 10.0,
    pixel_mm: float = 1.5625,
    matrix: int = 128,
    thickness_mm: float = 8.0,
    shifts_mm: float = 0.0,
    noise_sigma: float = 0.04,
    sub_planes: int = 3,
) -> SliceStack:
    """An oblique SAX stack of ``phantom`` planned on its ED heart (see the module docstring)."""
    gap_mm = _check(gap_mm, "SAX gap (mm)", 0.5, 30.0)
    pixel_mm = _check(pixel_mm, "pixel spacing (mm)", 0.1, 5.0)
    thickness_mm = _check(thickness_mm, "slice thickness (mm)", 0.0, 30.0)
    matrix = _check_matrix(matrix)
    if not 0.0 <= shifts_mm <= 30.0:
        raise InputError(f"scanner breath-hold shift must be in [0, 30] mm, got {shifts_mm}")
    ed = phantom if phantom.phase == "ED" else phantom.with_phase("ED")
    seed = phantom.seed
    first = -np.random.default_rng([seed, _PLAN]).uniform(0.0, 0.5) * gap_mm
    count = int(np.ceil((ed.shape.l_epi - first) / gap_mm)) + 1
    levels = first + gap_mm * np.arange(count)
    row, col = sax_frame(ed)
    normal = ed.long_axis
    half = pixel_mm * (matrix - 1) / 2.0
    # The field of view is centred 10 mm towards the RV and, like any real plan, not on the LV axis to
    # sub-pixel precision: without the (0.3, 0.2) pixel offset an even matrix puts the LAX planes,
    # which contain that axis, exactly half-way between two pixel rows, and nearest-neighbour
    # resampling onto them becomes a coin toss decided by rounding errors (seen: NIfTI vs DICOM).
    offset = 10.0 * ed.rv_direction + pixel_mm * (0.3 * ed.rv_direction + 0.2 * np.cross(normal, ed.rv_direction))
    centres = ed.base_center + levels[:, None] * normal + offset
    origins = centres - half * (row + col)
    # breath-hold displacement of the heart per slice, in-plane, uniform in a disc
    rng = np.random.default_rng([seed, _SHIFTS])
    radius = shifts_mm * np.sqrt(rng.uniform(size=count))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=count)
    shifts_rc = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    shifts_lps = shifts_rc[:, :1] * row + shifts_rc[:, 1:] * col
    jj, ii = np.meshgrid(np.arange(matrix), np.arange(matrix), indexing="ij")
    plane = (ii[..., None] * row + jj[..., None] * col) * pixel_mm
    pixels, labels = [], []
    for origin, shift in zip(origins, shifts_lps):
        image, label = _acquire(phantom, origin + plane - shift, normal, thickness_mm, sub_planes)
        pixels.append(image)
        labels.append(label)
    noise_rng = np.random.default_rng([seed, _NOISE_SAX, PHASES.index(phantom.phase)])
    pixels = rician(np.array(pixels), noise_sigma, noise_rng) if noise_sigma > 0 else np.array(pixels)
    meta = {
        "phase": phantom.phase,
        "trigger_time_ms": phantom.trigger_times_ms[phantom.phase],
        "levels_mm": [round(float(v), 4) for v in levels],
        "levels_note": "slice centres along the long axis from the ED base centre (mm)",
        "true_shifts_lps_mm": shifts_lps.tolist(),
        "true_shifts_row_col_mm": shifts_rc.tolist(),
        "shifts_note": "heart displacement during each slice's breath-hold; not in the reported geometry",
        "sub_planes": sub_planes,
        "noise_sigma": noise_sigma,
    }
    return SliceStack(
        pixels, origins, row, col, (pixel_mm, pixel_mm), labels=np.array(labels),
        thickness=thickness_mm, source=f"phantom {seed} SAX {phantom.phase}", meta=meta,
    )  # fmt: skip


def lax_directions(phantom: MRPhantom) -> dict[str, np.ndarray]:
    """In-plane transverse direction (perpendicular to the long axis) of each LAX view."""
    return {"2ch": phantom.e2, "3ch": phantom.outflow_direction(), "4ch": phantom.rv_direction}


def lax_plane(phantom: MRPhantom, view: str, pixel_mm: float = 1.5625, matrix: int = 128, thickness_mm: float = 8.0):
    """Empty plane image of one LAX ``view``: rows run base -> apex, columns along the view's direction."""
    if view not in LAX_VIEWS:
        raise InputError(f"LAX view {view!r} is unknown; use one of {LAX_VIEWS}")
    matrix = _check_matrix(matrix)
    ed = phantom if phantom.phase == "ED" else phantom.with_phase("ED")
    centre = ed.base_center + 0.3 * ed.shape.l_epi * ed.long_axis
    return plane_image(
        centre, lax_directions(ed)[view], ed.long_axis, (matrix, matrix), (pixel_mm, pixel_mm), thickness_mm
    )


def acquire_lax(
    phantom: MRPhantom,
    view: str,
    pixel_mm: float = 1.5625,
    matrix: int = 128,
    thickness_mm: float = 8.0,
    noise_sigma: float = 0.04,
    sub_planes: int = 3,
) -> tuple[sitk.Image, sitk.Image]:
    """``(image, labels)`` of one LAX view, both single-slice 3D images with the plane's geometry."""
    pixel_mm = _check(pixel_mm, "pixel spacing (mm)", 0.1, 5.0)
    thickness_mm = _check(thickness_mm, "slice thickness (mm)", 0.0, 30.0)
    reference = lax_plane(phantom, view, pixel_mm, matrix, thickness_mm)
    normal = np.array(reference.GetDirection()).reshape(3, 3)[:, 2]
    array, label = _acquire(phantom, grid_points(reference), normal, thickness_mm, sub_planes)
    if noise_sigma > 0:
        stream = [phantom.seed, _NOISE_LAX, LAX_VIEWS.index(view), PHASES.index(phantom.phase)]
        array = rician(array, noise_sigma, np.random.default_rng(stream))
    image, labels = sitk.GetImageFromArray(array), sitk.GetImageFromArray(label)
    image.CopyInformation(reference)
    labels.CopyInformation(reference)
    return image, labels


@dataclass
class Subject:
    """One phantom acquisition with its known answers."""

    phantom: MRPhantom
    truth_labels: sitk.Image  # 1 mm (default) uint8 label volume on an axis-aligned LPS grid
    sax: SliceStack  # pixels + labels, geometry as the scanner reports it
    lax: dict[str, sitk.Image]
    lax_labels: dict[str, sitk.Image]
    truth: dict


def make_subject(
    seed: int = 0,
    phase: str = "ED",
    shifts_mm: float = 0.0,
    gap_mm: float = 10.0,
    pixel_mm: float = 1.5625,
    matrix: int = 128,
    thickness_mm: float = 8.0,
    noise_sigma: float = 0.04,
    truth_spacing: float = 1.0,
) -> Subject:
    """Phantom ``seed`` at ``phase`` scanned as a SAX stack and 2ch/3ch/4ch LAX views."""
    phantom = MRPhantom(seed, phase)
    sax = acquire_sax(phantom, gap_mm, pixel_mm, matrix, thickness_mm, shifts_mm, noise_sigma)
    lax, lax_labels = {}, {}
    for view in LAX_VIEWS:
        lax[view], lax_labels[view] = acquire_lax(phantom, view, pixel_mm, matrix, thickness_mm, noise_sigma)
    truth = phantom.truth()
    truth["sax"] = {
        **{k: v for k, v in sax.meta.items() if k not in ("phase", "trigger_time_ms")},
        "gap_mm": gap_mm,
        "thickness_mm": thickness_mm,
        "pixel_mm": pixel_mm,
        "matrix": matrix,
        "normal_lps": [round(float(v), 6) for v in sax.normal],
    }
    directions = lax_directions(phantom)
    truth["lax"] = {v: {"in_plane_direction_lps": [round(float(x), 6) for x in d]} for v, d in directions.items()}
    truth["lax"]["3ch"]["angle_from_2ch_deg"] = round(float(phantom.outflow_angle), 3)
    return Subject(phantom, phantom.truth_volume(truth_spacing), sax, lax, lax_labels, truth)


def write_sax_dicom(
    stack: SliceStack,
    out_dir: str | Path,
    trigger_time_ms: float = 0.0,
    series_uid: str | None = None,
    patient_id: str = "CardiacDiffusionPhantom",
    first_instance: int = 1,
) -> list[Path]:
    """One MR Image Storage file per slice (uint16 + RescaleSlope), with the stack's geometry.

    Call it once per phase with the same ``series_uid`` and consecutive ``first_instance`` to
    write a multi-phase cine series.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid(entropy_srcs=[patient_id, "sax series"])
    study_uid = generate_uid(entropy_srcs=[patient_id, "study"])
    frame_uid = generate_uid(entropy_srcs=[patient_id, "frame of reference"])
    peak = float(stack.pixels.max())
    slope = float(f"{max(peak, 1e-6) / 4000.0:.6g}")
    rows, cols = stack.shape2d
    paths = []
    for k in range(stack.n):
        number = first_instance + k
        sop_uid = generate_uid(entropy_srcs=[series_uid, str(number), str(trigger_time_ms)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
        ds.Modality, ds.PatientName, ds.PatientID = "MR", patient_id, patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesDescription = "SAX cine (CardiacDiffusion phantom)"
        ds.SeriesNumber, ds.InstanceNumber = 1, number
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in stack.origins[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*stack.row_dir, *stack.col_dir)]
        ds.PixelSpacing = [f"{stack.pixel_spacing[1]:.6g}", f"{stack.pixel_spacing[0]:.6g}"]  # row, column
        ds.SliceThickness = f"{stack.thickness or 0.0:.6g}"
        if stack.n > 1:
            ds.SpacingBetweenSlices = f"{float(np.mean(stack.gaps)):.6g}"
        ds.SliceLocation = f"{float(stack.positions[k]):.6f}"
        ds.TriggerTime = f"{trigger_time_ms:.6g}"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:.6g}", "0", "US"
        stored = np.clip(np.round(stack.pixels[k] / slope), 0, 65535).astype("<u2")
        ds.PixelData = stored.tobytes()
        path = out_dir / f"IM_{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_subject(subject: Subject, out_dir: str | Path, dicom: bool = True) -> dict[str, Path]:
    """NIfTI images and labels, a SAX DICOM series (``dicom/sax``) and ``truth.json`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {
        "sax_image": subject.sax.to_image(),
        "sax_labels": subject.sax.to_image(labels=True),
        "truth_labels": subject.truth_labels,
    }
    for view in LAX_VIEWS:
        images[f"lax_{view}_image"] = subject.lax[view]
        images[f"lax_{view}_labels"] = subject.lax_labels[view]
    written = {}
    for name, image in images.items():
        written[name] = out_dir / f"{name}.nii.gz"
        sitk.WriteImage(image, str(written[name]), useCompression=True)
    if dicom:
        from pydicom.uid import generate_uid

        phantom = subject.phantom
        written["sax_dicom"] = out_dir / "dicom" / "sax"
        for stale in written["sax_dicom"].glob("IM_*.dcm"):  # an earlier phantom's: else read as one series with it
            stale.unlink()
        write_sax_dicom(
            subject.sax, written["sax_dicom"], phantom.trigger_times_ms[phantom.phase],
            series_uid=generate_uid(entropy_srcs=[f"phantom {phantom.seed}", "sax series", phantom.phase]),
            patient_id=f"CardiacDiffusionPhantom-{phantom.seed}",
        )  # fmt: skip
    written["truth"] = out_dir / "truth.json"
    write_json(written["truth"], subject.truth)
    return written
