"""Which description of a true-geometry DICOM stack suits DMCVR: the canonical one (normal base -> apex, as
ACDC's arrays are stored) or its mirror. Sunnybrook SC-HF-I-1 (GE, expert LV contours), gap protocol on the
contoured slices, with and without the contour labels; then layouts forced on phase 19 (chirality x pose).

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

# Layouts forced on phase 19 (chirality x in-plane pose): the description as given (ACDC's chirality, its DICOM
# normal points apex -> base) or transposed (the phantoms'), the crop turned so that the RV (117 deg in the net's
# labels of the crops as given; 90 - 117 transposed) lies at 170 deg (ACDC's pose) or 0 deg (the phantoms'), or
# not turned.
st = read_dicom_stack(SB / "dicom", phase=1)
labels, contoured = sunnybrook_labels(st, SB / "contours")
st = st.with_labels(labels).subset(sorted(c["slice"] for c in contoured))
orig_apex, orig_angle = R._View.points_to_apex, R.crop_angle
R._View.points_to_apex = lambda view: True  # keep the description given
print("phase 19, layouts forced")
for name, stack, rv in (("as given (ACDC chirality)", st, 117.0), ("transposed (phantom chirality)", st.transposed(), 90 - 117.0)):
    for target in (None, 170.0, 0.0):
        turn = 0.0 if target is None else float((np.deg2rad(target - rv) + np.pi) % (2 * np.pi) - np.pi)
        R.crop_angle = lambda labels, spacing, turn=turn: turn
        scores = [score_volume(stack, "dmcvr", kept, device="cpu")["dice"] for kept in (True, False)]
        print(" ", name, "RV at", "%.0f (not turned)" % rv if target is None else target,
              [{k: round(v, 3) for k, v in d.items() if k != "RV" and v == v} for d in scores])
R._View.points_to_apex, R.crop_angle = orig_apex, orig_angle
