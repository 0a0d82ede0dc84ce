"""Which in-plane chirality the morphology net knows: each stack's acquired slices as described and mirrored
(``SliceStack.transposed``), cropped as dmcvr crops them (the pose rule), with and without the labels given;
per description the net's confidence (mean top-class probability of its labelled pixels), its Dice against
the truth in the crop, the pose turn and what the base/apex rule says.

    python scripts/check_chirality.py acdc 41 80      # the gap protocol's kept slices
    python scripts/check_chirality.py phantom         # MR phantom seeds 7-18, slices with heart
    python scripts/check_chirality.py sunnybrook      # the true-geometry DICOM, contoured slices
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
import CardiacDiffusionLib.dmcvr.reconstruction as R
from CardiacDiffusionLib.dmcvr.data import crop_angle
net, size, spacing = R.load_dmcvr(None, "cpu")

def assess(stack, use_labels):
    truth = stack.labels
    s = stack if use_labels else stack.with_labels(None)
    view = R._View.of(net, s, size, spacing, 16)
    angle = crop_angle(*view.slice_labels())
    frame, crops = view.crops(angle)
    p = R.class_probs(net, crops, 16).numpy()
    lab = p.argmax(1)
    conf = float(p.max(1)[lab > 0].mean()) if (lab > 0).any() else 0.0
    t = np.rint(frame.sample_stack(truth.astype(float), order=0)).astype(int)
    d = {}
    for v, n in ((1, "LV"), (2, "MYO"), (3, "RV")):
        if (t == v).any():
            d[n] = round(float(2 * ((lab == v) & (t == v)).sum() / ((lab == v).sum() + (t == v).sum())), 3)
    return dict(conf=round(conf, 4), dice=d, angle=round(float(np.degrees(angle))), apex=view.points_to_apex())

def stacks(which):
    if which == "acdc":
        from CardiacDiffusionLib.reconstruction.gap import acdc_stacks, split_kept_dropped
        for st in acdc_stacks(Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc", range(int(sys.argv[2]), int(sys.argv[3]) + 1)):
            yield st.source.split("/")[-1], st.subset(split_kept_dropped(st.n)[0])
    if which == "phantom":
        from CardiacDiffusionLib.phantoms.scanner import make_subject
        for seed in range(7, 19):
            st = make_subject(seed=seed).sax
            keep = np.nonzero((st.labels > 0).any(axis=(1, 2)))[0]
            yield f"phantom{seed}", st.subset(keep)
    if which == "sunnybrook":
        from CardiacDiffusionLib.io.dicom import read_dicom_stack
        from CardiacDiffusionLib.io.contours import sunnybrook_labels
        SB = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook-SC-HF-I-1"
        for phase in (1, 0):
            st = read_dicom_stack(SB / "dicom", phase=phase)
            labels, contoured = sunnybrook_labels(st, SB / "contours")
            yield f"sb{phase}", st.with_labels(labels).subset(sorted(c["slice"] for c in contoured))

rows = []
for name, st in stacks(sys.argv[1]):
    row = {"name": name}
    for desc, s in (("as", st), ("tr", st.transposed())):
        for ul in (True, False):
            row[f"{desc}_{'lab' if ul else 'nolab'}"] = assess(s, ul)
    rows.append(row)
    print(json.dumps(row), flush=True)
for mode in ("lab", "nolab"):
    mean = {d: {k: round(float(np.mean([r[f"{d}_{mode}"]["dice"][k] for r in rows if k in r[f"{d}_{mode}"]["dice"]])), 3)
                for k in ("LV", "MYO", "RV") if any(k in r[f"{d}_{mode}"]["dice"] for r in rows)} for d in ("as", "tr")}
    surer = sum(r[f"as_{mode}"]["conf"] >= r[f"tr_{mode}"]["conf"] for r in rows)
    print(f"{mode}: Dice as described {mean['as']}, mirrored {mean['tr']}; net surer as described in {surer} of {len(rows)}")
