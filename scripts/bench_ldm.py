"""Benchmark: seconds and peak memory per sampled image + label pair by DDIM step count, on CPU.

The shipped model (32^3, latent 3x16^3) is timed as trained; ``--size 64`` adds the same
architecture at 64^3 (latent 3x32^3, untrained weights: the cost does not depend on them);
``--model`` may name others (e.g. the 64^3 model). Loaded models run their batch-1 convolutions
through oneDNN (utils/onednn.py); the baseline of the ratios is the first model with PyTorch's own
choice of convolution (``*_native``), timed in the same run.
A pair = DDIM loop + VAE decode + argmax; the label clean-up is timed on its own.

    python scripts/bench_ldm.py --out bench_ldm.json [--threads 1] [--steps 10 20 50] [--size 64]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from CardiacDiffusionLib.ldm.cleanup import clean_labels
from CardiacDiffusionLib.ldm.diffusion import LatentDiffusion
from CardiacDiffusionLib.ldm.generate import DEFAULT_MODEL, load_ldm
from CardiacDiffusionLib.utils.bench import measure, write_report
from CardiacDiffusionLib.utils.onednn import use_native_convs, use_onednn_convs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=[DEFAULT_MODEL])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--size", type=int, nargs="*", default=[], help="also time the architecture at these sizes (untrained)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench_ldm.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    models = {}
    for name in a.model:
        model = load_ldm(name)
        models[f"{Path(name).stem}_{model.config['image_size']}"] = model
    first_name, first = next(iter(models.items()))
    for size in a.size:
        models[f"untrained_{size}"] = use_onednn_convs(LatentDiffusion({**first.config, "image_size": size}).eval())
    results = {}
    baseline = f"{first_name}_native_ddim{a.steps[-1]}"
    native = use_native_convs(copy.deepcopy(first))
    results[baseline] = measure(lambda: native.sample(1, seed=0, steps=a.steps[-1]), repeats=a.repeats)
    print(baseline, f"{results[baseline]['median_s']:.3f} s", flush=True)
    for name, model in models.items():
        for steps in a.steps:
            results[f"{name}_ddim{steps}"] = measure(lambda: model.sample(1, seed=0, steps=steps), repeats=a.repeats)
            print(name, steps, f"{results[f'{name}_ddim{steps}']['median_s']:.3f} s", flush=True)
        labels = model.sample(1, seed=0, steps=a.steps[0])[1][0].numpy()
        results[f"{name}_cleanup"] = measure(lambda: clean_labels(labels), repeats=a.repeats)
    report = write_report(a.out, results, baseline, config={"threads": a.threads, "steps": a.steps, "model": a.model},
                          description="LDM sampling per image + label pair, CPU")  # fmt: skip
    print(json.dumps({k: {"median_s": round(v["median_s"], 3), "peak_rss_mib": round(v.get("peak_rss_mib", 0))}
                      for k, v in report["results"].items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
