"""Would a segmenter fine-tuned on *generated* slices label them better than the morphology net? (Tried
2026-11-28, not adopted: docs/models/dmcvr.md.)

    OMP_NUM_THREADS=2 .venv/bin/python scripts/try_dmcvr_label_net.py pairs --data ../shared/data/acdc \
        --patients 1-40 --pattern even --out bench/label_pairs     # and --pattern odd; then 41-60 even (tuning)
    OMP_NUM_THREADS=2 .venv/bin/python scripts/try_dmcvr_label_net.py finetune --pairs bench/label_pairs \
        --steps 1500 --lr 3e-4      # train on 001-040 (both patterns), tune on 041-060 (even)

``pairs``: the gap protocol's generated crops (dmcvr defaults, kept slices' labels given; ``even`` keeps slices
0, 2, 4, ..., ``odd`` 1, 3, 5, ...) with the truth of the dropped slices sampled on the same crop frame, and
the kept slices' real crops and labels. ``finetune``: a copy of the shipped morphology net trained on half
generated, half real crops (Dice + focal, rotation +-10 deg, shift +-4 px, gamma), crop-level Dice of the
tuning crops every 100 steps against the shipped net's.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from CardiacDiffusionLib.cli.evaluate import parse_range
from CardiacDiffusionLib.dmcvr import reconstruction as R
from CardiacDiffusionLib.dmcvr.losses import seg_loss
from CardiacDiffusionLib.labels import MR_LABELS
from CardiacDiffusionLib.metrics.overlap import dice
from CardiacDiffusionLib.reconstruction.gap import acdc_stacks


def make_pairs(data: Path, patients, pattern: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    seen = {}
    probs, crops = R.class_probs, R._View.crops

    def record_generated(net, images, batch):  # with labels given, called once: on the generated crops
        seen["generated"] = images.clone()
        return probs(net, images, batch)

    def record_frame(view, angle):
        frame, images = crops(view, angle)
        seen.update(frame=frame, kept=images.clone())
        return frame, images

    R.class_probs, R._View.crops = record_generated, record_frame
    try:
        for stack in acdc_stacks(data, patients):
            kept = np.arange(0 if pattern == "even" else 1, stack.n, 2)
            dropped = np.setdiff1d(np.arange(kept[0], kept[-1]), kept)
            path = out / f"{Path(stack.source).stem}_{pattern}.npz"
            if len(kept) < 2 or not len(dropped) or path.exists():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                R.dmcvr(stack.subset(kept), stack.positions[dropped], device="cpu")
            on_crop = (lambda a: np.rint(seen["frame"].sample_stack(a.astype(float), order=0)).astype(np.uint8))  # fmt: skip
            np.savez_compressed(path, gen=seen["generated"][:, 0].numpy().astype(np.float16),
                                truth=on_crop(stack.labels[dropped]), kept=seen["kept"][:, 0].numpy().astype(np.float16),
                                kept_labels=on_crop(stack.labels[kept]))  # fmt: skip
            print(path.name, len(dropped), flush=True)
    finally:
        R.class_probs, R._View.crops = probs, crops


def load(folder: Path, patterns) -> dict[str, np.ndarray]:
    files = [np.load(p) for pattern in patterns for p in sorted(folder.glob(f"{pattern}.npz"))]
    return {k: np.concatenate([f[k] for f in files]) for k in ("gen", "truth", "kept", "kept_labels")}


def crop_dice(net, images: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(images[i:i + 64].astype(np.float32))[:, None]).argmax(1)
                          for i in range(0, len(images), 64)]).numpy()  # fmt: skip
    return {name: round(dice(pred == v, truth == v), 4) for v, name in MR_LABELS.items()}


def augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n, size = x.shape[0], x.shape[-1]
    angle = torch.from_numpy(np.deg2rad(rng.uniform(-10, 10, n))).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    theta[:, :, 2] = torch.from_numpy(rng.uniform(-4, 4, (n, 2)) * 2 / size).float()
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False).clamp(0, 1)
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
    return x ** torch.from_numpy(np.exp(rng.uniform(-0.15, 0.15, (n, 1, 1, 1)))).float(), y


def finetune(folder: Path, train: list[str], tune: list[str], steps: int, lr: float, batch: int = 32) -> None:
    net = R.load_dmcvr(None, "cpu")[0].morph_net.eval()
    a, b = load(folder, train), load(folder, tune)
    print("train: generated", len(a["gen"]), "real", len(a["kept"]), "| tuning generated", len(b["gen"]))
    print("shipped morphology net, tuning crops", crop_dice(net, b["gen"], b["truth"]), flush=True)
    copy_ = copy.deepcopy(net).train()
    opt = torch.optim.AdamW(copy_.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = np.random.default_rng(0)
    for step in range(1, steps + 1):
        i, j = rng.integers(0, len(a["gen"]), batch // 2), rng.integers(0, len(a["kept"]), batch - batch // 2)
        x = torch.from_numpy(np.concatenate([a["gen"][i], a["kept"][j]]).astype(np.float32))[:, None]
        y = torch.from_numpy(np.concatenate([a["truth"][i], a["kept_labels"][j]]).astype(np.int64))
        loss = seg_loss(copy_, *augment(x, y, rng))
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if step % 100 == 0:
            copy_.eval()
            print(step, round(loss.item(), 4), "tuning crops", crop_dice(copy_, b["gen"], b["truth"]), flush=True)
            copy_.train()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("pairs")
    q.add_argument("--data", required=True)
    q.add_argument("--patients", default="1-40")
    q.add_argument("--pattern", choices=("even", "odd"), default="even")
    q.add_argument("--out", required=True)
    f = sub.add_parser("finetune")
    f.add_argument("--pairs", required=True)
    f.add_argument("--train", nargs="+", default=["patient0[0-3]*", "patient040*"], help="file globs (001-040)")
    f.add_argument("--tune", nargs="+", default=["patient04[1-9]*_even", "patient05*_even", "patient060*_even"],
                   help="file globs (041-060, the gap protocol's pattern)")
    f.add_argument("--steps", type=int, default=1500)
    f.add_argument("--lr", type=float, default=3e-4)
    args = p.parse_args()
    if args.command == "pairs":
        make_pairs(Path(args.data), parse_range(args.patients), args.pattern, Path(args.out))
    else:
        finetune(Path(args.pairs), args.train, args.tune, args.steps, args.lr)


if __name__ == "__main__":
    main()
