"""Readers and writers: volumes (NIfTI/NRRD/MHA), cine DICOM series, ACDC HDF5, Sunnybrook contours.

All return SimpleITK images or :class:`~CardiacDiffusionLib.geometry.stack.SliceStack` in LPS mm and
raise :class:`~CardiacDiffusionLib.errors.InputError` naming the input when it cannot be used.
The names below are imported from their module on first use: a command reading NIfTI does not load
pydicom, h5py or scikit-image.
"""

from ..utils.lazy import lazy_names

__all__, __getattr__, __dir__ = lazy_names(__name__, {
    "acdc": ("NOMINAL_SPACING", "acdc_split", "list_acdc", "read_acdc"),
    "contours": ("contour_mask", "contour_points_lps", "read_contour", "sunnybrook_labels"),
    "dicom": ("dicom_phases", "read_dicom_stack", "scan_dicom"),
    "volumes": ("read_image", "read_labels", "read_stack", "write_image"),
})
