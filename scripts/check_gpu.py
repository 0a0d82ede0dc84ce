"""GPU check: the three workflows' networks on CUDA against the CPU, and their GPU timings.

    python scripts/check_gpu.py --write-stack gpu_stack.npz          # here (needs SimpleITK)
    python scripts/check_gpu.py --stack gpu_stack.npz --out gpu.json  # on the GPU machine

Runs without SimpleITK, which a GPU server may lack: the 12-slice SAX phantom stack of
``bench_reconstruct`` travels as ``--stack``. Sections, each on CPU and CUDA in the same run:

* dmcvr: reconstruction of the stack to 1 mm with the default steps and strength on both
  (agreement: label Dice, image PSNR), full inversion with 50 DDIM steps on CUDA; times as
  ratios to the shape baseline (CPU) of the same run;
* epdiff: FLASH shooting + warp of a 64^3 velocity, CUDA against CPU (max displacement difference);
* ldm: the shipped 32^3 model sampled on both (label agreement) and the 32^3 / 64^3 architecture's
  seconds per pair by DDIM step count (64^3 untrained: the speed of that size, not its quality).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from CardiacDiffusionLib.geometry.stack import SliceStack
from CardiacDiffusionLib.metrics import dice, psnr
from CardiacDiffusionLib.utils.jsonfile import dumps, write_json


def write_stack(path: str) -> None:
    """Save bench_reconstruct's 12-slice phantom stack and its 1 mm targets (arrays only)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_reconstruct import twelve_slice_stack

    from CardiacDiffusionLib.reconstruction.volume import target_positions

    stack, gap = twelve_slice_stack(0)
    np.savez_compressed(path, pixels=stack.pixels, labels=stack.labels, origins=stack.origins, row_dir=stack.row_dir,
                        col_dir=stack.col_dir, pixel_spacing=np.array(stack.pixel_spacing),
                        targets=target_positions(stack.positions, 1.0), gap=gap)  # fmt: skip


def read_stack(path: str) -> tuple[SliceStack, np.ndarray]:
    f = np.load(path)
    stack = SliceStack(pixels=f["pixels"], origins=f["origins"], row_dir=f["row_dir"], col_dir=f["col_dir"],
                       pixel_spacing=tuple(float(v) for v in f["pixel_spacing"]), labels=f["labels"],
                       source="phantom 0 SAX")  # fmt: skip
    return stack, f["targets"]


#: the accelerator compared with the CPU (``--device cpu`` runs the script's logic on CPU alone)
ACCEL = "cuda"


def timed(fn, device: str, repeats: int = 1, warmup: bool = True):
    """(result of the last call, median seconds), after one untimed call when ``warmup``."""
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def check_dmcvr(stack: SliceStack, targets: np.ndarray) -> dict:
    from CardiacDiffusionLib.dmcvr.reconstruction import DEFAULT_BATCH, DEFAULT_STEPS, DEFAULT_STRENGTH, dmcvr
    from CardiacDiffusionLib.reconstruction.baselines import shape

    out: dict = {"slices": stack.n, "output_slices": len(targets)}
    _, out["shape_cpu_s"] = timed(lambda: shape(stack, targets), "cpu")

    def run(device: str, steps: int, strength: float, warmup: bool):
        opts = {"steps": steps, "strength": strength, "device": device, "batch_size": DEFAULT_BATCH[ACCEL]}
        return timed(lambda: dmcvr(stack, targets, **opts), device, warmup=warmup)

    (img_cpu, lab_cpu), out["default_cpu_s"] = run("cpu", DEFAULT_STEPS, DEFAULT_STRENGTH, False)
    (img_gpu, lab_gpu), out["default_accel_s"] = run(ACCEL, DEFAULT_STEPS, DEFAULT_STRENGTH, True)
    out["default_accel_vs_cpu"] = {"image_psnr_db": psnr(img_gpu, img_cpu, data_range=float(np.abs(img_cpu).max())),
                                   **{f"dice_{k}": dice(lab_gpu == v, lab_cpu == v) for k, v in (("LV", 1), ("MYO", 2), ("RV", 3))}}  # fmt: skip
    _, out["full_inversion_ddim50_accel_s"] = run(ACCEL, 50, 1.0, False)
    for key in ("default_accel_s", "full_inversion_ddim50_accel_s"):
        out[key.replace("_s", "_ratio_to_shape")] = out[key] / out["shape_cpu_s"]
    return out


def check_epdiff(size: int = 64) -> dict:
    from CardiacDiffusionLib.sadir import EPDiffShooting

    shape = (size,) * 3
    gen = torch.Generator().manual_seed(0)
    v0 = torch.nn.functional.interpolate(torch.randn(1, 3, 6, 6, 6, generator=gen), size=shape, mode="trilinear")
    v0 = 3.0 * v0 / v0.abs().max()
    out, disps = {"size": size}, {}
    for device in ("cpu", ACCEL):
        shooter = EPDiffShooting(shape).to(device)
        with torch.no_grad():
            result, out[f"{device}_s"] = timed(lambda: shooter(v0.to(device))[0], device, repeats=3)
        disps[device] = result.float().cpu()
    out["max_disp_diff_vox"] = float((disps[ACCEL] - disps["cpu"]).abs().max())
    out["accel_speedup_vs_cpu"] = out["cpu_s"] / out[f"{ACCEL}_s"]
    return out


def check_ldm(steps_list=(10, 20, 50)) -> dict:
    from CardiacDiffusionLib.ldm.diffusion import LatentDiffusion
    from CardiacDiffusionLib.models.store import load_model

    out: dict = {}
    samples = {}
    for device in ("cpu", ACCEL):
        model = load_model("ldm-ct-phantom-32", device=device).module
        with torch.no_grad():
            (_, labels), out[f"shipped32_ddim50_{device}_s"] = timed(lambda: model.sample(1, seed=0, steps=50), device,
                                                                     warmup=device != "cpu")  # fmt: skip
        samples[device] = labels.cpu().numpy()
    out["shipped32_accel_vs_cpu_label_agreement"] = float((samples[ACCEL] == samples["cpu"]).mean())
    config = load_model("ldm-ct-phantom-32").module.config
    for size in (32, 64):
        model = LatentDiffusion({**config, "image_size": size}).to(ACCEL).eval()
        for steps in steps_list:
            with torch.no_grad():
                _, out[f"arch{size}_ddim{steps}_accel_s"] = timed(lambda: model.sample(1, seed=0, steps=steps), ACCEL, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write-stack", help="save the phantom stack to this .npz and stop (needs SimpleITK)")
    p.add_argument("--stack", help="the stack written by --write-stack")
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--device", default="cuda", help="the accelerator (cpu: try the script without one)")
    a = p.parse_args()
    if a.write_stack:
        return write_stack(a.write_stack)
    global ACCEL
    ACCEL = a.device
    if ACCEL == "cuda" and not torch.cuda.is_available():
        raise SystemExit("check_gpu: no CUDA device")
    name = torch.cuda.get_device_name(0) if ACCEL == "cuda" else ACCEL
    report = {"accel": name, "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    stack, targets = read_stack(a.stack)
    for name, fn in (("epdiff", check_epdiff), ("ldm", check_ldm), ("dmcvr", lambda: check_dmcvr(stack, targets))):
        t0 = time.perf_counter()
        try:
            report[name] = fn()
            dumps(report[name], name)  # a NaN or infinity: this section's error, the file and the others' results kept
        except Exception as error:  # one section failing must not hide the others' results
            report[name] = {"error": f"{type(error).__name__}: {error}"}
        report[name]["section_s"] = time.perf_counter() - t0
        print(name, json.dumps(report[name]), flush=True)
        write_json(a.out, report)


if __name__ == "__main__":
    main()
