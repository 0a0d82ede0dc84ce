"""Does mixing synthetic pairs help `train ctseg`? Real-only vs SSL + real + synthetic vs SSL + real only.

CT phantoms stand in for a user's pairs (seeds 0-3, 32^3), 24 pairs sampled from the shipped LDM (20 DDIM
steps) are the synthetic folder, and 8 held-out phantoms (the LDM's test seeds) score each arm's fine-tuned net
(mean Dice over the 8 labels). Each arm is the documented command (`cardiac-diffusion train ctseg`) in a fresh
process; arm c reuses arm b's SSL stage. The table in docs/TRAINING.md came from

    OMP_NUM_THREADS=1 python scripts/eval_ctseg_mix.py --seeds 0 1 --steps 300 --out ctseg_mix

``--set KEY=VALUE`` (repeatable) adds a config override to every run's both stages (e.g. ``data.flips=false``); its
runs and results then go to ``s<seed>/<overrides>/`` and ``results_<overrides>.json``. ``--arms`` runs only those arms
(arm c needs arm b's run of the same seed and overrides).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from CardiacDiffusionLib.labels import CT_LABELS
from CardiacDiffusionLib.ldm.data import TEST_SEED, hu_to_unit
from CardiacDiffusionLib.ldm.seg_tasks import CTSegData, load_pair
from CardiacDiffusionLib.metrics import dice
from CardiacDiffusionLib.models.store import load_model
from CardiacDiffusionLib.phantoms.ct import make_ct_phantom
from CardiacDiffusionLib.utils.jsonfile import write_json

CLI = [sys.executable, "-m", "CardiacDiffusionLib.cli.main"]
ARMS = {
    "a_real_only": ["--stage", "finetune", "finetune:model.encoder_from=null", "data.synthetic_fraction=0"],
    "b_ssl_then_real_plus_syn": [],  # the preset
    "c_ssl_then_real_only": ["finetune:data.synthetic_fraction=0"],
}


def write_phantom(folder: Path, name: str, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    contrast = bool(np.random.default_rng([seed, 7]).uniform() < 0.75)
    image, labels, _ = make_ct_phantom(seed, size=32, contrast=contrast)
    sitk.WriteImage(image, str(folder / f"{name}_image.nii.gz"))
    sitk.WriteImage(labels, str(folder / f"{name}_labels.nii.gz"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (one run of each arm per seed)")
    p.add_argument("--steps", type=int, default=300, help="training steps of each stage")
    p.add_argument("--out", default="ctseg_mix", help="work folder (phantoms, samples, runs) and results.json")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both stages of every run, e.g. data.flips=false (repeatable)")  # fmt: skip
    a = p.parse_args(argv)
    root = Path(a.out)
    variant = "_".join(o.replace("=", "-") for o in a.overrides)  # "": the default runs' paths
    if not (root / "real").exists():
        for s in range(4):
            write_phantom(root / "real", f"r{s}", s)
        for s in range(8):
            write_phantom(root / "test", f"t{s}", TEST_SEED + s)
    if not (root / "syn" / "labels.json").exists():
        subprocess.run([*CLI, "sample", "--n", "24", "--steps", "20", "--seed", "10000", "--device", "cpu",
                        "--out", str(root / "syn")], check=True)  # fmt: skip
    data = CTSegData(size=32, spacing_mm=5.0)
    test = [load_pair(root / "test" / f"t{s}_image.nii.gz", root / "test" / f"t{s}_labels.nii.gz", data, "test")
            for s in range(8)]  # fmt: skip
    x = torch.stack([torch.from_numpy(hu_to_unit(h))[None].float() for h, _ in test])
    results = {}
    for seed in a.seeds:
        common = [f"data.real={root / 'real'}", f"data.synthetic={root / 'syn'}", "data.val_fraction=0",
                  f"train.steps={a.steps}", f"train.seed={seed}", "train.validate_every=0", "--progress", "none",
                  "--device", "cpu", *a.overrides]  # fmt: skip
        runs = root / f"s{seed}" / variant
        for arm in a.arms:
            out, extra = runs / arm, ARMS[arm]
            if arm == "c_ssl_then_real_only":  # arm b's SSL stage
                (out / "ssl").mkdir(parents=True, exist_ok=True)
                ssl = runs / "b_ssl_then_real_plus_syn" / "ssl" / "model.safetensors"
                extra = [*extra, "--stage", "finetune", f"finetune:model.encoder_from={ssl}"]
            start = time.time()
            subprocess.run([*CLI, "train", "ctseg", "--out", str(out), *common, *extra], check=True)
            net = load_model(out / "finetune" / "model.safetensors").module.eval()
            with torch.no_grad():
                pred = torch.cat([net(x[i : i + 2]).argmax(1) for i in range(0, len(x), 2)]).numpy()
            per = {n: float(np.nanmean([dice(q == k, y == k) for q, (_, y) in zip(pred, test)])) for k, n in CT_LABELS.items()}
            per["mean"] = float(np.mean(list(per.values())))
            results.setdefault(arm, {})[f"seed{seed}"] = {"dice": per, "seconds": round(time.time() - start, 1)}
            print(arm, seed, *a.overrides, f"mean Dice {per['mean']:.3f}", flush=True)
    out = root / (f"results_{variant}.json" if variant else "results.json")
    write_json(out, {"seeds": a.seeds, "steps": a.steps, "overrides": a.overrides, "arms": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
