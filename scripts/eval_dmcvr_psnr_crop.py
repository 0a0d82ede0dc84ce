"""Where DMCVR's PSNR comes from: the gap protocol's dropped slices scored inside the heart crop only (the pixels
where dmcvr's image differs from linear's; outside the crop dmcvr's image is the linear interpolation), pooled by
10 mm ring around the crop's centre, and with the crop feathered into the linear image (``--feather R0 R1``: dmcvr's
image up to R0 mm from the centre, linear from R1, a linear ramp between; tried, not adopted).

    python scripts/eval_dmcvr_psnr_crop.py --data ../shared/data/acdc --patients 61-80 --out dmcvr_psnr_crop.json
    python scripts/eval_dmcvr_psnr_crop.py --patients 61-70 --feather 50 70
    python scripts/eval_dmcvr_psnr_crop.py --phantoms 7-18 --feather 50 70     # MR phantoms (scaled as ACDC's files)
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from CardiacDiffusionLib.cli.evaluate import parse_range
from CardiacDiffusionLib.metrics.image import psnr, ssim
from CardiacDiffusionLib.reconstruction.baselines import get_method
from CardiacDiffusionLib.reconstruction.gap import acdc_stacks, split_kept_dropped
from CardiacDiffusionLib.utils.jsonfile import write_json

RINGS_MM = np.arange(0, 110, 10)


def stacks(a):
    if a.phantoms:
        from CardiacDiffusionLib.phantoms.scanner import make_subject

        for seed in parse_range(a.phantoms):
            yield make_subject(seed=seed).sax
    else:
        yield from acdc_stacks(a.data, parse_range(a.patients))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/acdc")
    p.add_argument("--patients", default="61-80")
    p.add_argument("--phantoms", help="MR phantom seeds instead of ACDC, e.g. 7-18")
    p.add_argument("--feather", type=float, nargs=2, metavar=("R0", "R1"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="dmcvr_psnr_crop.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows, ring_se = [], np.zeros((2, len(RINGS_MM)))
    ring_n = np.zeros(len(RINGS_MM))
    for stack in stacks(a):
        kept, dropped = split_kept_dropped(stack.n)
        if len(dropped) == 0:
            continue
        scale = (lambda x: x)  # fmt: skip  (ACDC's files are clipped at the 99th percentile and scaled to [0, 1])
        if a.phantoms:  # the phantoms get the same treatment
            hi = np.percentile(stack.pixels, 99)
            lo = min(float(stack.pixels.min()), hi)
            scale = (lambda x: (np.minimum(x, hi) - lo) / (hi - lo))  # fmt: skip
        given, where, truth = stack.subset(kept), stack.positions[dropped], scale(stack.pixels[dropped])
        linear = scale(get_method("linear")(given, where)[0])
        dmcvr = scale(get_method("dmcvr")(given, where, device="cpu")[0])
        crop = np.abs(dmcvr - linear) > 1e-6
        rr, cc = np.nonzero(crop.any(0))
        r, c = np.mgrid[: crop.shape[1], : crop.shape[2]]
        dist = np.hypot((r - rr.mean()) * stack.pixel_spacing[1], (c - cc.mean()) * stack.pixel_spacing[0])
        images = {"linear": linear, "dmcvr": dmcvr}
        if a.feather:
            weight = np.clip((a.feather[1] - dist) / (a.feather[1] - a.feather[0]), 0, 1)
            images["dmcvr_feathered"] = linear + weight[None] * (dmcvr - linear)
        row = {"volume": stack.source, "crop_fraction": float(crop.mean())}
        for name, image in images.items():
            row[f"{name}_crop"] = psnr(image[crop], truth[crop], data_range=1.0)
            row[f"{name}_all"] = psnr(image, truth, data_range=1.0)
            row[f"{name}_ssim"] = float(np.mean([ssim(x, y, data_range=1.0) for x, y in zip(image, truth)]))
        ring = np.digitize(dist, RINGS_MM) - 1
        for k in range(len(RINGS_MM)):
            m = crop & (ring == k)[None]
            ring_se[0, k] += ((linear - truth) ** 2)[m].sum()
            ring_se[1, k] += ((dmcvr - truth) ** 2)[m].sum()
            ring_n[k] += m.sum()
        rows.append(row)
        print(json.dumps(row), flush=True)
    means = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0] if k != "volume"}
    rings = {f"{lo_mm}-{lo_mm + 10} mm": {"pixels": int(n), "linear": round(float(10 * np.log10(n / se[0])), 2),
                                          "dmcvr": round(float(10 * np.log10(n / se[1])), 2)}
             for lo_mm, n, se in zip(RINGS_MM, ring_n, ring_se.T) if n}  # fmt: skip
    print("mean", json.dumps(means))
    print("rings (pooled PSNR dB)", json.dumps(rings))
    write_json(a.out, {"protocol": "gap protocol, labels given, PSNR dB (mean over volumes) inside the crop / all, SSIM",
                       "data": f"phantoms {a.phantoms}" if a.phantoms else f"ACDC {a.patients}", "feather": a.feather,
                       "mean": means, "rings": rings, "volumes": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
