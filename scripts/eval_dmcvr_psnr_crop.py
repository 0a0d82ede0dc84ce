"""Where DMCVR's PSNR comes from: the gap protocol's dropped slices scored inside the heart crop only (the pixels
where dmcvr's image differs from linear's; outside the crop dmcvr's image is the linear interpolation).

    python scripts/eval_dmcvr_psnr_crop.py --data ../shared/data/acdc --patients 61-80 --out dmcvr_psnr_crop.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from CardiacDiffusionLib.cli.evaluate import parse_range
from CardiacDiffusionLib.metrics.image import psnr
from CardiacDiffusionLib.reconstruction.baselines import get_method
from CardiacDiffusionLib.reconstruction.gap import acdc_stacks, split_kept_dropped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/acdc")
    p.add_argument("--patients", default="61-80")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="dmcvr_psnr_crop.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for stack in acdc_stacks(a.data, parse_range(a.patients)):
        kept, dropped = split_kept_dropped(stack.n)
        if len(dropped) == 0:
            continue
        given, where, truth = stack.subset(kept), stack.positions[dropped], stack.pixels[dropped]
        linear = get_method("linear")(given, where)[0]
        dmcvr = get_method("dmcvr")(given, where, device="cpu")[0]
        crop = np.abs(dmcvr - linear) > 1e-6
        row = {"volume": stack.source, "crop_fraction": float(crop.mean())}
        for name, image in (("linear", linear), ("dmcvr", dmcvr)):
            row[f"{name}_crop"] = psnr(image[crop], truth[crop], data_range=1.0)
            row[f"{name}_outside"] = psnr(image[~crop], truth[~crop], data_range=1.0)
            row[f"{name}_all"] = psnr(image, truth, data_range=1.0)
        rows.append(row)
        print(json.dumps(row), flush=True)
    means = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0] if k != "volume"}
    print("mean", json.dumps(means))
    with open(a.out, "w") as f:
        json.dump({"protocol": "ACDC gap protocol, labels given, PSNR dB (mean over volumes) inside/outside the crop",
                   "patients": a.patients, "mean": means, "volumes": rows}, f, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
