"""Which description of a true-geometry DICOM stack suits DMCVR: the canonical one (normal base -> apex, as
ACDC's arrays are stored) or its mirror. Sunnybrook SC-HF-I-1 (GE, expert LV contours), gap protocol on the
contoured slices, with and without the contour labels.

    python scripts/check_orientation_sunnybrook.py
"""
import numpy as np, torch
from pathlib import Path
from CardiacDiffusionLib.io.dicom import read_dicom_stack
from CardiacDiffusionLib.io.contours import sunnybrook_labels
from CardiacDiffusionLib.geometry.stack import normal_points_to_apex
from CardiacDiffusionLib.reconstruction.gap import score_volume
import CardiacDiffusionLib.dmcvr.reconstruction as R
torch.set_num_threads(1)
SB = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook-SC-HF-I-1"
for phase, name in ((1, "19"), (0, "8")):  # read_dicom_stack phase index -> Sunnybrook phase
    st = read_dicom_stack(SB / "dicom", phase=phase)
    labels, contoured = sunnybrook_labels(st, SB / "contours")
    st = st.with_labels(labels).subset(sorted(c["slice"] for c in contoured))
    print("phase", name, "slices", st.n, "normal", np.round(st.normal, 2), "normal base->apex (anatomy, else labels):", normal_points_to_apex(st))
    orig = R._View.points_to_apex
    for variant, forced in (("canonical", None), ("mirrored", True)):
        if forced:
            R._View.points_to_apex = lambda view: not orig(view)
        for kept in (True, False):
            r = score_volume(st, "dmcvr", kept, device="cpu")
            print(" ", variant, "labels" if kept else "no labels", {k: (round(v, 3) if v is not None else None) for k, v in r["dice"].items()})
        R._View.points_to_apex = orig
