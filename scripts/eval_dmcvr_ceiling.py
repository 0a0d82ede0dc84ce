"""Ceiling of dmcvr's label path on the gap protocol: the morphology net segmenting the REAL dropped slices.

Runs ``evaluate gap``'s dmcvr scoring with the generation step replaced by the true dropped slices (same crop
frame from the kept labels, same intensity treatment), so the Dice left is what the segmentation at 64 x 64 /
2.25 mm and the resampling back cost; the difference to dmcvr's own Dice is what generation costs.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/eval_dmcvr_ceiling.py [--data ../shared/data/acdc] [--patients 61 80]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from CardiacDiffusionLib.dmcvr import reconstruction as R
from CardiacDiffusionLib.reconstruction import gap

state: dict = {}  # the stack being scored, its kept pixels and dmcvr's crop frame


class _RecordedFrame(R.CropFrame):
    """The crop frame dmcvr builds, kept so the real slices are cropped the same way."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        state["frame"] = self


def _real_slices(net, crops, positions, targets, *args, **kwargs) -> torch.Tensor:
    """Stands in for dmcvr's generation: the true slices at ``targets``, normalised as the kept ones."""
    full = state["full"]
    lo, hi = R.normalisation(state["kept_pixels"])
    index = [int(np.argmin(np.abs(full.positions - t))) for t in targets]
    norm = (np.minimum(full.pixels[index], hi) - lo) / (hi - lo)
    return torch.from_numpy(np.clip(state["frame"].sample_stack(norm), 0, 1)[:, None].astype(np.float32))


R.CropFrame = _RecordedFrame
R._fill = _real_slices


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"))
    p.add_argument("--patients", type=int, nargs=2, default=[61, 80])
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for stack in gap.acdc_stacks(Path(a.data), range(a.patients[0], a.patients[1] + 1)):
        kept, _ = gap.split_kept_dropped(stack.n)
        state["full"], state["kept_pixels"] = stack, stack.pixels[kept]
        scores = gap.score_volume(stack, "dmcvr", device="cpu")
        if scores:
            rows.append(scores)
    names = rows[0]["dice"]
    mean = {k: round(float(np.mean([r["dice"][k] for r in rows if r["dice"][k] is not None])), 4) for k in names}
    print(json.dumps({"dice_of_segmented_real_dropped_slices": mean, "volumes": len(rows)}))


if __name__ == "__main__":
    main()
