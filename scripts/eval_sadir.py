"""Held-out phantom evaluation of the myocardium from sparse SAX slices: SADIR vs shape-based interpolation vs 3D UNet.

All three see the same label-only SAX slices (8 by default, spread over the myocardium) of phantoms
never trained on (seeds from sadir.train.TEST_SEED; ED for even, ES for odd seeds). Scored on the
64^3 normalised LV frame (1.75 mm) against the phantom's analytic myocardium at those voxel centres.

    python scripts/eval_sadir.py --sadir runs/sadir/atlas/model.safetensors --unet runs/sadir_unet/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from CardiacDiffusionLib.metrics.overlap import dice, jaccard
from CardiacDiffusionLib.metrics.surface import hd95
from CardiacDiffusionLib.models.store import load_model
from CardiacDiffusionLib.reconstruction.volume import reconstruct
from CardiacDiffusionLib.sadir import data
from CardiacDiffusionLib.sadir.reconstruct import REFINE_STEPS, reconstruct_myocardium, topology
from CardiacDiffusionLib.sadir.train import TEST_SEED
from CardiacDiffusionLib.utils.jsonfile import number_or_none, write_json


def shape_baseline(stack, fine: data.LVFrame) -> np.ndarray:
    labels = reconstruct(stack, "shape", spacing=1.0).labels
    moved = sitk.Resample(labels, fine.reference(), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(moved) == data.MYO


def unet_baseline(net, stack, frame: data.LVFrame, fine: data.LVFrame) -> np.ndarray:
    sparse, mask = data.sparse_volume(stack, frame)
    with torch.no_grad():
        prob = torch.sigmoid(net(torch.from_numpy(np.stack([sparse, mask]))[None]))
        prob = F.interpolate(prob, size=(fine.size,) * 3, mode="trilinear", align_corners=False)
    return prob[0, 0].numpy() >= 0.5


def scores(pred: np.ndarray, truth: np.ndarray, spacing: float, slab: np.ndarray) -> dict:
    """Dice, Jaccard, HD95 of the volume, and Dice within ``slab`` (the planes from the first to the last given
    slice; beyond them the slices do not tell where the base or apex ends)."""
    return {"dice": dice(pred, truth), "jaccard": jaccard(pred, truth), "hd95_mm": number_or_none(hd95(pred, truth, (spacing,) * 3)),
            "dice_slab": dice(pred[slab], truth[slab])}  # fmt: skip



def finite_mean(values: list, key: str) -> dict:
    """``{key: mean of the defined values (None if none), key_undefined: how many were None}`` (an empty
    prediction's HD95 is infinite: written as null, not averaged)."""
    defined = [v for v in values if v is not None]
    return {key: float(np.mean(defined)) if defined else None, f"{key}_undefined": len(values) - len(defined)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sadir", required=True)
    p.add_argument("--unet")
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--first-seed", type=int, default=TEST_SEED,
                   help="first phantom seed (default: the held-out test seeds; 4100 for choosing between models)")
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    p.add_argument("--refine", type=int, default=REFINE_STEPS,
                   help="also score SADIR + this many test-time refinement steps (the library default; 0: skip)")
    p.add_argument("--out", default="sadir_eval.json")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    sadir = load_model(a.sadir).module
    unet = load_model(a.unet).module.eval() if a.unet else None
    rows = []
    for seed in range(a.first_seed, a.first_seed + a.cases):
        s = data.make_sample(seed, slices=a.slices)
        stack, truth = s["stack"], s["truth_fine"].astype(bool)
        fine = s["frame"].resized(data.OUTPUT_SIZE)
        slab = data.slice_slab(stack, fine)
        row = {"seed": seed, "phase": s["phase"], "slices": stack.n}
        start = time.time()
        result = reconstruct_myocardium(stack, sadir, steps=a.steps, device="cpu", refine_iters=0)
        row["sadir_s"] = time.time() - start
        pred = sitk.GetArrayFromImage(result.labels) == data.MYO
        row["sadir"] = {**scores(pred, truth, fine.spacing, slab), "jacobian_min": result.jacobian_min,
                        "topology_ok": result.topology["ok"], "slice_dice": result.slice_dice}  # fmt: skip
        if a.refine:
            start = time.time()
            result = reconstruct_myocardium(stack, sadir, steps=a.steps, device="cpu", refine_iters=a.refine)
            row["sadir_refined_s"] = time.time() - start
            pred = sitk.GetArrayFromImage(result.labels) == data.MYO
            row["sadir_refined"] = {**scores(pred, truth, fine.spacing, slab), "jacobian_min": result.jacobian_min,
                                    "topology_ok": result.topology["ok"], "slice_dice": result.slice_dice}  # fmt: skip
        start = time.time()
        shape = shape_baseline(stack, fine)
        row["shape_s"] = time.time() - start
        row["shape"] = {**scores(shape, truth, fine.spacing, slab), "topology_ok": topology(shape)["ok"]}
        if unet is not None:
            start = time.time()
            u = unet_baseline(unet, stack, s["frame"], fine)
            row["unet_s"] = time.time() - start
            row["unet3d"] = {**scores(u, truth, fine.spacing, slab), "topology_ok": topology(u)["ok"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    methods = [m for m in ("sadir", "sadir_refined", "shape", "unet3d") if m in rows[0]]
    summary = {}
    for m in methods:
        summary[m] = {k: float(np.mean([r[m][k] for r in rows])) for k in ("dice", "jaccard", "dice_slab")}
        summary[m].update(finite_mean([r[m]["hd95_mm"] for r in rows], "hd95_mm"))  # empty prediction: undefined
        summary[m]["dice_sd"] = float(np.std([r[m]["dice"] for r in rows]))
        summary[m]["topology_ok_fraction"] = float(np.mean([r[m]["topology_ok"] for r in rows]))
    for m in [m for m in ("sadir", "sadir_refined") if m in methods]:
        summary[m]["jacobian_min"] = float(min(r[m]["jacobian_min"] for r in rows))
        summary[m]["seconds_per_case"] = float(np.mean([r[m + "_s"] for r in rows]))
    out = {"cases": a.cases, "seeds": [a.first_seed, a.first_seed + a.cases - 1], "slices": a.slices,
           "grid": "64^3 normalised LV frame, 1.75 mm", "summary": summary, "rows": rows}  # fmt: skip
    write_json(a.out, out)
    print("method         Dice            Jaccard  HD95 mm  Dice in slab  topology ok")
    for m in methods:
        s = summary[m]
        print(f"{m:14s} {s['dice']:.3f} ± {s['dice_sd']:.3f}  {s['jaccard']:.3f}    {s['hd95_mm'] if s['hd95_mm'] is None else round(s['hd95_mm'], 2)!s:>5}     {s['dice_slab']:.3f}         "
              f"{s['topology_ok_fraction']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
