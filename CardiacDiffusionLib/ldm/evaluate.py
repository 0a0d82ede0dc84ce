"""``cardiac-diffusion evaluate ldm``: fidelity of the LDM and the usefulness of its pairs.

Data roles, all CT phantoms at the model's size: *real-role* training pairs (seeds 0..R-1, the
low-label regime), held-out test pairs (seeds from ``data.TEST_SEED``), generated pairs (DDIM,
cleaned labels). Downstream arms, same fine-tuning budget (steps, batch, lr, seed) each:
(a) scratch on the real-role pairs; (b) SSL on generated images, then fine-tune on the real-role
pairs (Medical Diffusion's use); (c) the same SSL, fine-tune on real + generated pairs (Hu et al.).
(b) and (c) share one SSL run, which (a) does not get: that is the comparison the paper makes.
Fidelity: VAE round trip (PSNR/SSIM on the unit-range image, label Dice), label-image agreement
(net (a) on generated images vs their labels), per-label volumes generated vs training, pairwise
MS-SSIM diversity (generated vs real-role), HU in the heart: real CT (TotalSegmentator fixture),
phantoms, generated.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import MultiScaleSSIMMetric

from ..errors import InputError
from ..labels import CT_LABELS
from ..metrics import dice, psnr, ssim
from .cleanup import noise_report
from .data import TEST_SEED, CTPhantomPairs, hu_to_unit, unit_to_hu
from .diffusion import LatentDiffusion
from .generate import sample_pairs
from .ssl import build_unet, finetune, predict, pretrain, transfer_encoder

HEART = (1, 2, 3, 4, 5, 8)  # labels inside a TotalSegmentator "heart" mask (no AO/PA)


def stack(data: CTPhantomPairs) -> tuple[torch.Tensor, torch.Tensor]:
    items = [data[i] for i in range(len(data))]
    return torch.stack([d["image"] for d in items]), torch.stack([d["labels"] for d in items])


def per_label_dice(pred: torch.Tensor, ref: torch.Tensor) -> dict[str, dict[str, float | None]]:
    """{label: {mean, sd}} over the volumes where the label is in prediction or reference (None where it is in
    none: JSON has no NaN), and "mean" (the mean of the per-label means; its sd None)."""
    p, r = pred.numpy(), ref.numpy()
    out = {}
    for k, name in CT_LABELS.items():
        vals = np.array([dice(a == k, b == k) for a, b in zip(p, r)], float)
        vals = vals[np.isfinite(vals)]
        out[name] = {"mean": float(vals.mean()), "sd": float(vals.std())} if len(vals) else {"mean": None, "sd": None}
    means = [v["mean"] for v in out.values() if v["mean"] is not None]
    out["mean"] = {"mean": float(np.mean(means)) if means else None, "sd": None}
    return out


def vae_fidelity(model: LatentDiffusion, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """PSNR/SSIM of the unit-range image and label Dice after encode + decode; see :func:`psnr_summary`."""
    recon, pred = model.vae.round_trip(images, labels)
    x, y = images[:, 0].numpy(), recon[:, 0].clamp(-1, 1).numpy()
    return {**psnr_summary([psnr(a, b, 2.0) for a, b in zip(y, x)]),
            "ssim": float(np.mean([ssim(a, b, 2.0) for a, b in zip(y, x)])),
            "label_dice": per_label_dice(pred, labels)}  # fmt: skip


def psnr_summary(values: list[float]) -> dict:
    """``psnr_db``: the mean PSNR over the volumes not reproduced exactly (None if all were: JSON has no infinity);
    ``psnr_infinite``: how many were (infinite PSNR, left out of the mean, not capped), said in ``notes``."""
    finite = [float(v) for v in values if np.isfinite(v)]
    exact = len(values) - len(finite)
    notes = [f"PSNR: {exact} of {len(values)} volumes reproduced exactly (infinite PSNR), left out of the mean"]
    return {"psnr_db": float(np.mean(finite)) if finite else None, "psnr_infinite": exact,
            "notes": notes if exact else []}  # fmt: skip


def volumes_ml(labels: torch.Tensor, spacing_mm: float) -> dict[str, dict[str, float]]:
    voxel_ml = spacing_mm**3 / 1000.0
    out = {}
    for k, name in CT_LABELS.items():
        v = (labels == k).flatten(1).sum(1).double().numpy() * voxel_ml
        out[name] = {"mean": float(v.mean()), "sd": float(v.std()), "min": float(v.min()), "max": float(v.max())}
    return out


def pairwise_ms_ssim(images: torch.Tensor, max_pairs: int = 60) -> float:
    """Mean MS-SSIM over distinct pairs (2 scales, kernel 3: 32^3 volumes are too small for the default)."""
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=2.0, kernel_size=3, weights=(0.5, 0.5))
    pairs = list(itertools.combinations(range(len(images)), 2))[:max_pairs]
    a = torch.stack([images[i] for i, _ in pairs])
    b = torch.stack([images[j] for _, j in pairs])
    return float(metric(a, b).mean())


def heart_hu(hu: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    v = hu[mask]
    q = np.percentile(v, [5, 50, 95])
    return {"mean": float(v.mean()), "p5": float(q[0]), "p50": float(q[1]), "p95": float(q[2])}


def real_ct_heart(real_ct: tuple[str | Path, str | Path] | None) -> dict | None:
    """HU in the heart mask of a real CT (``(ct, heart_mask)``, e.g. a TotalSegmentator ``heart`` mask; window-clipped
    like our data), or None without one."""
    if real_ct is None:
        return None
    from ..io.volumes import read_image

    ct, mask = real_ct
    image = read_image(ct, name="--real-ct")
    m = sitk.Resample(read_image(mask, name="--real-ct heart mask"), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    if not sitk.GetArrayViewFromImage(m).any():
        raise InputError(f"--real-ct {mask}: no voxel of the heart mask lies on {ct}; give the mask of this CT")
    hu = unit_to_hu(hu_to_unit(sitk.GetArrayFromImage(image).astype(np.float32)))
    out = heart_hu(hu, sitk.GetArrayFromImage(m) > 0)
    out["volume_ml"] = float((sitk.GetArrayFromImage(m) > 0).sum() * np.prod(image.GetSpacing()) / 1000)
    return out


def _heart_stats(images: torch.Tensor, labels: torch.Tensor, spacing_mm: float) -> dict:
    hu = unit_to_hu(images[:, 0].numpy())
    mask = np.isin(labels.numpy(), HEART)
    out = heart_hu(hu, mask)
    out["volume_ml"] = float(mask.sum() / len(images) * spacing_mm**3 / 1000)
    return out


def evaluate_ldm(model: LatentDiffusion, real: int = 8, generated: int = 24, test: int = 8, ssl_steps: int = 200,
                 finetune_steps: int = 200, ddim_steps: int = 20, seed: int = 0, log=print,
                 real_heart: dict | None = None) -> dict:  # fmt: skip
    """One evaluation (seed ``seed``); ``real_heart``: :func:`real_ct_heart` of a real CT, shown beside the
    phantoms' and the generated pairs' heart HU (None: not compared)."""
    size, spacing = int(model.config["image_size"]), float(model.config["spacing_mm"])
    t0 = time.perf_counter()
    real_x, real_y = stack(CTPhantomPairs(real, 0, size, augment=False))
    test_x, test_y = stack(CTPhantomPairs(test, TEST_SEED, size, augment=False))
    result: dict = {"setup": {"size": size, "spacing_mm": spacing, "real": real, "generated": generated, "test": test,
                              "ssl_steps": ssl_steps, "finetune_steps": finetune_steps, "ddim_steps": ddim_steps,
                              "seed": seed}}  # fmt: skip
    result["vae_round_trip_test"] = vae_fidelity(model, test_x, test_y)
    log(f"VAE round trip done ({time.perf_counter() - t0:.0f} s)")
    pairs = sample_pairs(model, generated, seed=10_000 + seed, steps=ddim_steps)
    gen_x = torch.stack([torch.from_numpy(hu_to_unit(p["hu"]))[None].float() for p in pairs])
    gen_y = torch.stack([torch.from_numpy(p["labels"].astype(np.int64)) for p in pairs])
    result["label_noise"] = {
        "before_cleanup": {k: float(np.mean([p["noise_before"][k] for p in pairs])) for k in pairs[0]["noise_before"]},
        "after_cleanup": {k: float(np.mean([p["noise_after"][k] for p in pairs])) for k in pairs[0]["noise_after"]},
        "real_role_labels": {k: float(np.mean([noise_report(y.numpy())[k] for y in real_y])) for k in pairs[0]["noise_before"]},
    }  # fmt: skip
    log(f"sampled {generated} pairs ({time.perf_counter() - t0:.0f} s)")
    result["volumes_ml"] = {"real_role": volumes_ml(real_y, spacing), "generated": volumes_ml(gen_y, spacing)}
    result["diversity_ms_ssim"] = {"generated": pairwise_ms_ssim(gen_x), "real_role": pairwise_ms_ssim(real_x)}
    result["heart_hu"] = {"real_ct_totalseg": real_heart, "phantom_real_role": _heart_stats(real_x, real_y, spacing),
                          "generated": _heart_stats(gen_x, gen_y, spacing)}  # fmt: skip

    arms = {}
    torch.manual_seed(seed)
    scratch = build_unet(9)
    losses = finetune(scratch, real_x, real_y, finetune_steps, seed=seed)
    arms["a_scratch_real"] = {"dice": per_label_dice(predict(scratch, test_x), test_y), "final_loss": losses[-1]}
    log(f"arm (a) done ({time.perf_counter() - t0:.0f} s)")
    result["label_image_agreement"] = {"generated": per_label_dice(predict(scratch, gen_x), gen_y),
                                       "held_out_real_reference": arms["a_scratch_real"]["dice"]}  # fmt: skip
    ssl_net, ssl_losses = pretrain(gen_x, ssl_steps, seed=seed)
    result["ssl"] = {"first_loss": ssl_losses[0], "final_loss": ssl_losses[-1]}
    log(f"SSL done ({time.perf_counter() - t0:.0f} s)")
    net_b = transfer_encoder(ssl_net, 9, seed=seed)
    losses = finetune(net_b, real_x, real_y, finetune_steps, seed=seed)
    arms["b_ssl_gen_then_real"] = {"dice": per_label_dice(predict(net_b, test_x), test_y), "final_loss": losses[-1]}
    net_c = transfer_encoder(ssl_net, 9, seed=seed)
    losses = finetune(net_c, torch.cat([real_x, gen_x]), torch.cat([real_y, gen_y]), finetune_steps, seed=seed)
    arms["c_ssl_gen_then_real_plus_gen"] = {"dice": per_label_dice(predict(net_c, test_x), test_y),
                                            "final_loss": losses[-1]}  # fmt: skip
    result["downstream"] = arms
    result["seconds"] = time.perf_counter() - t0
    log(f"done ({result['seconds']:.0f} s)")
    return result


def summarise_repeats(results: list[dict]) -> dict:
    """Mean and sd over repeats (seeds) of each arm's mean Dice and of the label-image agreement, and per
    pair of arms how many repeats the first won: 200-step arms vary by up to 0.4 Dice between seeds, so one
    run does not order them.
    A run whose mean Dice is None (no label in its test volumes nor predictions) is left out of that mean (``n``: the
    runs behind it) and of that arm's win counts (``compared``: the runs both arms have), said in ``notes``."""
    seeds = [r["setup"]["seed"] for r in results]
    per_arm = {arm: [r["downstream"][arm]["dice"]["mean"]["mean"] for r in results] for arm in results[0]["downstream"]}
    agreement = [r["label_image_agreement"]["generated"]["mean"]["mean"] for r in results]
    notes: list[str] = []

    def spread(name: str, runs: list) -> dict:
        kept = [v for v in runs if v is not None]
        if len(kept) < len(runs):
            notes.append(f"{name}: mean Dice undefined in {len(runs) - len(kept)} of {len(runs)} runs (seeds "
                         f"{', '.join(str(s) for s, v in zip(seeds, runs) if v is None)}): left out")  # fmt: skip
        return {"mean": float(np.mean(kept)) if kept else None, "sd": float(np.std(kept)) if kept else None,
                "n": len(kept), "runs": runs}  # fmt: skip

    out = {"seeds": seeds, "arms": {a: spread(a, v) for a, v in per_arm.items()},
           "label_image_agreement": spread("label-image agreement", agreement), "wins": {}, "compared": {}}
    arms = list(per_arm)
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            both = [(x, y) for x, y in zip(per_arm[a], per_arm[b]) if x is not None and y is not None]
            out["wins"][f"{a} > {b}"] = int(sum(x > y for x, y in both))
            out["compared"][f"{a} > {b}"] = len(both)
    out["notes"] = notes
    return out


def format_repeats(summary: dict) -> str:
    """Markdown: mean +- sd of each arm over the repeats, and the pairwise win counts."""
    n = len(summary["seeds"])
    lines = [f"| arm (mean Dice over {n} seeds) | mean | sd |", "|---|---|---|"]
    lines += [f"| {arm} | {_number(v['mean'])} | {_number(v['sd'])} |" for arm, v in summary["arms"].items()]
    agree = summary["label_image_agreement"]
    lines.append(f"| label-image agreement (gen.) | {_number(agree['mean'])} | {_number(agree['sd'])} |")
    lines.append("")
    lines += [f"{pair}: {wins} of {summary['compared'][pair]} seeds" for pair, wins in summary["wins"].items()]
    lines += summary["notes"]
    return "\n".join(lines)


def format_table(result: dict) -> str:
    """Markdown: per-label Dice of the three arms, then the fidelity numbers."""
    names = [*CT_LABELS.values(), "mean"]
    arms = result["downstream"]
    lines = ["| arm | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for arm, r in arms.items():
        lines.append(f"| {arm} | " + " | ".join(_number(r["dice"][n]["mean"]) for n in names) + " |")
    vae = result["vae_round_trip_test"]
    vae_dice = vae["label_dice"]
    lines.append("| VAE round trip (label Dice) | " + " | ".join(_number(vae_dice[n]["mean"]) for n in names) + " |")
    agree = result["label_image_agreement"]["generated"]
    lines.append("| label-image agreement (gen.) | " + " | ".join(_number(agree[n]["mean"]) for n in names) + " |")
    lines.append("")
    exact = f" ({vae['psnr_infinite']} volumes exact, infinite PSNR, left out)" if vae.get("psnr_infinite") else ""
    db = "inf" if vae["psnr_db"] is None else f"{vae['psnr_db']:.2f}"
    lines.append(f"VAE round trip: PSNR {db} dB{exact}, SSIM {vae['ssim']:.3f} (unit-range image, window -200..800 HU)")
    d = result["diversity_ms_ssim"]
    lines.append(f"pairwise MS-SSIM: generated {d['generated']:.3f}, real-role phantoms {d['real_role']:.3f} (lower = more diverse)")
    n = result["label_noise"]
    lines.append(f"noisy label voxels: generated {100 * n['before_cleanup']['noisy_fraction']:.2f} % -> "
                 f"{100 * n['after_cleanup']['noisy_fraction']:.2f} % after clean-up (phantom truth "
                 f"{100 * n['real_role_labels']['noisy_fraction']:.2f} %)")  # fmt: skip
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
