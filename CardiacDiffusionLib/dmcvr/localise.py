"""Where the heart is in a SAX stack without labels, from the DMCVR morphology net alone (:func:`heart_center`).

The net was trained on heart-centred crops; run on a whole field of view it also fires on other organs, so the
whole view only proposes candidates, and each candidate is judged in a crop at the net's own scale.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..utils.device import run_batched
from .data import CropFrame, label_center
from .model import DMCVRModel

#: LV candidates tried (heart_center), and the weight of the fraction of slices a candidate is found in.
#: Chosen on ACDC 001-060 (top 2-4, weight 0-0.1; docs/models/dmcvr.md): the old rule (the first candidate
#: by slices, then area) missed small end-systolic hearts
CANDIDATES = 3
SLICE_WEIGHT = 0.05
#: below this confidence of the chosen candidate (mean top-class probability of the net's labels in its
#: crop) a localisation without labels is reported as uncertain (QualityWarning). ACDC 001-080, kept slices
#: of the gap protocol: found hearts 0.89-0.97 (below 0.91 only 038 ED/ES, HCM), the misses (057) 0.88
LOCALISATION_MIN_CONFIDENCE = 0.91


def class_probs(net: DMCVRModel, crops: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The morphology net's class probabilities (n, C, size, size) of crops (n, 1, size, size)."""
    with torch.inference_mode():
        return run_batched(lambda b: F.softmax(net.morph_net(b.to(net.device)), 1).cpu(), crops, batch_size, net.device)


def heart_center(
    model: DMCVRModel, norm: np.ndarray, pixel_spacing, size: int, spacing: float
) -> tuple[tuple[float, float], float]:
    """(row, col) of the heart in the acquired grid, from the morphology net alone (no labels given), and the
    net's confidence there (mean top-class probability of its labelled pixels in the chosen crop; 0 if none).

    1. Segment the whole field of view at the training pixel size. The crop-trained net also
       fires on other organs, so LV candidates are places where LV-cavity blobs ringed by
       myocardium are found (the heart stays put through a SAX stack, false positives rarely do).
    2. Segment a crop centred on each of the ``CANDIDATES`` best candidates (most slices, then
       area) -- the net's own setting -- and keep the one where the net is surest: mean top-class
       probability of its labelled pixels, plus ``SLICE_WEIGHT`` x the fraction of slices the
       candidate was found in.
    3. Centre on the bounding box of that crop's labels within 60 mm of the LV, as the training
       crops are centred on the labels' bounding box.
    """
    rows, cols = norm.shape[1:]
    extent = max(rows * pixel_spacing[1], cols * pixel_spacing[0]) / spacing
    # at least the net's own crop: a smaller view (a tight crop, a tiny image) is padded, not shrunk below
    # what the UNet can downsample
    full = max(size, int(np.ceil(extent / model.size_multiple) * model.size_multiple))
    middle = ((rows - 1) / 2, (cols - 1) / 2)

    def probs(frame: CropFrame) -> np.ndarray:
        x = torch.from_numpy(np.clip(frame.sample_stack(norm), 0, 1)[:, None].astype(np.float32))
        return class_probs(model, x, 16).numpy()

    def to_grid(frame: CropFrame, rc) -> tuple[float, float]:  # crop (row, col) -> acquired grid (axis-aligned)
        off = (np.asarray(rc, float) - (frame.size - 1) / 2) * spacing
        return frame.center[0] + off[0] / pixel_spacing[1], frame.center[1] + off[1] / pixel_spacing[0]

    frame = CropFrame(middle, pixel_spacing, full, spacing)
    labels = probs(frame).argmax(1)
    count = np.zeros(labels.shape[1:])
    for slice_labels in labels:  # LV cavity blobs ringed by myocardium (other organs rarely are)
        blobs, m = ndimage.label(slice_labels == 1)
        for i in range(1, m + 1):
            blob = blobs == i
            ring = ndimage.binary_dilation(blob, iterations=2) & ~blob
            if blob.sum() * spacing**2 >= 50 and np.mean(slice_labels[ring] == 2) > 0.5:
                count += blob
    if not count.any():
        count = np.isin(labels, (1, 2)).sum(axis=0).astype(float)
    regions, n = ndimage.label(count > 0)
    if n == 0:
        return middle, 0.0
    index = np.arange(1, n + 1)
    slices, area = ndimage.maximum(count, regions, index=index), ndimage.sum(count, regions, index=index)
    best_score, best = -np.inf, None
    for k in np.lexsort((area, slices))[::-1][:CANDIDATES]:
        lv = ndimage.center_of_mass(count * (regions == k + 1))
        crop = CropFrame(to_grid(frame, lv), pixel_spacing, size, spacing)
        p = probs(crop)
        crop_labels = p.argmax(1)
        if not crop_labels.any():
            continue
        confidence = float(p.max(1)[crop_labels > 0].mean())
        score = confidence + SLICE_WEIGHT * slices[k] / len(labels)
        if score > best_score:
            best_score, best = score, (crop, crop_labels, confidence)
    if best is None:
        return middle, 0.0
    crop, crop_labels, confidence = best
    rr, cc = np.mgrid[0:size, 0:size]
    near = np.hypot(rr - (size - 1) / 2, cc - (size - 1) / 2) * spacing <= 60.0
    center = label_center(crop_labels * near)
    return (crop.center if center is None else to_grid(crop, center)), confidence
