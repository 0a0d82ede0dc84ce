"""Readers and writers: volumes (NIfTI/NRRD/MHA), cine DICOM series, ACDC HDF5, Sunnybrook contours.

All return SimpleITK images or :class:`~CardiacDiffusionLib.geometry.stack.SliceStack` in LPS mm and
raise :class:`~CardiacDiffusionLib.errors.InputError` naming the input when it cannot be used.
"""

from .acdc import NOMINAL_SPACING, acdc_split, list_acdc, read_acdc
from .contours import contour_mask, contour_points_lps, read_contour, sunnybrook_labels
from .dicom import dicom_phases, read_dicom_stack, scan_dicom
from .volumes import read_image, read_labels, read_stack, write_image

__all__ = [
    "NOMINAL_SPACING", "acdc_split", "contour_mask", "contour_points_lps", "dicom_phases", "list_acdc",
    "read_acdc", "read_contour", "read_dicom_stack", "read_image", "read_labels", "read_stack", "scan_dicom",
    "sunnybrook_labels", "write_image",
]
