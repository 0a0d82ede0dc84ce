"""Benchmark: seconds and peak memory per sampled image + label pair by DDIM step count, on CPU.

The shipped model (32^3, latent 3x16^3) is timed as trained; ``--size 64`` adds the same
architecture at 64^3 (latent 3x32^3, untrained weights: the cost does not depend on them).
A pair = DDIM loop + VAE decode + argmax; the label clean-up is timed on its own.

    python scripts/bench_ldm.py --out bench_ldm.json [--threads 1] [--steps 10 20 50] [--size 64]
"""

from __future__ import annotations

import argparse
import json

import torch

from CardiacDiffusionLib.ldm.cleanup import clean_labels
from CardiacDiffusionLib.ldm.diffusion import LatentDiffusion
from CardiacDiffusionLib.ldm.generate import DEFAULT_MODEL, load_ldm
from CardiacDiffusionLib.utils.bench import measure, write_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--size", type=int, nargs="*", default=[], help="also time the architecture at these sizes (untrained)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench_ldm.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    shipped = load_ldm(a.model)
    models = {f"shipped_{shipped.config['image_size']}": shipped}
    for size in a.size:
        models[f"untrained_{size}"] = LatentDiffusion({**shipped.config, "image_size": size}).eval()
    results = {}
    for name, model in models.items():
        for steps in a.steps:
            results[f"{name}_ddim{steps}"] = measure(lambda: model.sample(1, seed=0, steps=steps), repeats=a.repeats)
            print(name, steps, f"{results[f'{name}_ddim{steps}']['median_s']:.3f} s", flush=True)
        labels = model.sample(1, seed=0, steps=a.steps[0])[1][0].numpy()
        results[f"{name}_cleanup"] = measure(lambda: clean_labels(labels), repeats=a.repeats)
    baseline = f"shipped_{shipped.config['image_size']}_ddim{a.steps[-1]}"
    report = write_report(a.out, results, baseline, config={"threads": a.threads, "steps": a.steps, "model": a.model},
                          description="LDM sampling per image + label pair, CPU")  # fmt: skip
    print(json.dumps({k: {"median_s": round(v["median_s"], 3), "peak_rss_mib": round(v.get("peak_rss_mib", 0))}
                      for k, v in report["results"].items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
