"""Readers and writers: volumes (NIfTI/NRRD/MHA), cine DICOM series, ACDC HDF5, Sunnybrook contours.

All return SimpleITK images or :class:`~CardiacDiffusionLib.geometry.stack.SliceStack` in LPS mm and
raise :class:`~CardiacDiffusionLib.errors.InputError` naming the input when it cannot be used.
The names below are imported from their module on first use: a command reading NIfTI does not load
pydicom, h5py or scikit-image.
"""

from importlib import import_module

_MODULES = {
    "acdc": ("NOMINAL_SPACING", "acdc_split", "list_acdc", "read_acdc"),
    "contours": ("contour_mask", "contour_points_lps", "read_contour", "sunnybrook_labels"),
    "dicom": ("dicom_phases", "read_dicom_stack", "scan_dicom"),
    "volumes": ("read_image", "read_labels", "read_stack", "write_image"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
