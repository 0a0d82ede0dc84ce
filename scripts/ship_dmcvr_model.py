"""Ship a trained DMCVR run as ``Resources/models/<name>.safetensors`` registered in ``Resources/models.json``.

    .venv/bin/python scripts/ship_dmcvr_model.py --run runs/dmcvr [--name dmcvr-acdc-64] [--metrics m.json]
        [--from-checkpoint] [--version 0.1]

Takes the diffusion stage's exported model (EMA weights), or with ``--from-checkpoint`` the EMA
weights of its newest checkpoint (a run stopped early), writes it through ``save_model`` with
the input treatment (crop size, pixel spacing) in its metadata, and adds or replaces the
registry entry (sha256, input, labels, training command, metrics).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from CardiacDiffusionLib.dmcvr import DMCVRModel
from CardiacDiffusionLib.models.store import load_model, read_model_header, save_model
from CardiacDiffusionLib.training.checkpoint import latest_checkpoint, load_checkpoint
from CardiacDiffusionLib.utils.jsonfile import write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/dmcvr")
    p.add_argument("--name", default="dmcvr-acdc-64")
    p.add_argument("--version", default="0.1")
    p.add_argument("--metrics", help="JSON object of measured metrics to put in the entry")
    p.add_argument("--from-checkpoint", action="store_true")
    args = p.parse_args()
    run = Path(args.run) / "diffusion"
    config = json.loads((run / "config.json").read_text())
    seg_steps = json.loads((Path(args.run) / "seg" / "config.json").read_text())["train"]["steps"]
    if args.from_checkpoint:
        ckpt = latest_checkpoint(run / "checkpoints")
        state = load_checkpoint(ckpt)
        model = DMCVRModel(config["model"])
        ema = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
        model.load_state_dict(ema)
        steps, meta = state["step"], {"training_command": None, "checkpoint": ckpt.name}
    else:
        loaded = load_model(run / "model.safetensors")
        model, meta = loaded.module, loaded.meta
        steps = meta.get("steps")
    data = config["data"]
    size, spacing = int(data.get("size", 64)), float(data.get("spacing_mm", 2.25))
    command = "cardiac-diffusion train dmcvr --data /work/shared/data/acdc --out runs/dmcvr --device cpu  (OMP_NUM_THREADS=1)"
    meta = {**meta, "input": {"size": [size, size], "spacing_mm": [spacing, spacing]}, "ema": True,
            "diffusion_steps": steps, "seg_steps": seg_steps}  # fmt: skip
    out = ROOT / "Resources" / "models" / f"{args.name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    sha = save_model(model.cpu().eval(), out, config["model"], architecture="dmcvr", meta=meta)
    read_model_header(out)
    entry = {
        "name": args.name,
        "workflow": "dmcvr",
        "version": args.version,
        "file": f"models/{out.name}",
        "sha256": sha,
        "architecture": "dmcvr",
        "description": (
            "DMCVR morphology-guided diffusion autoencoder (semantic encoder + conditional DDIM denoiser + "
            f"BasicUNet morphology/segmentation net), {size}x{size} crops of {spacing} mm around the heart, "
            "trained on a 2-core CPU; see docs/models/dmcvr.md"
        ),
        "license": "Apache-2.0 (weights); ACDC data terms apply",
        "input": {"spacing_mm": [spacing, spacing], "size": [size, size], "modality": "MR cine SAX (bSSFP)"},
        "labels": {"1": "LV cavity", "2": "LV myocardium", "3": "RV cavity"},
        "training": {"command": command, "data": "ACDC patients 001-060 (ED+ES) + 8 MR phantom subjects (ED+ES)",
                     "steps": int(steps)},  # fmt: skip
        "metrics": json.loads(Path(args.metrics).read_text()) if args.metrics else {},
    }
    registry = ROOT / "Resources" / "models.json"
    entries = [e for e in json.loads(registry.read_text())["models"] if e["name"] != args.name] + [entry]
    write_json(registry, {"models": entries})
    print(json.dumps({"file": str(out), "bytes": out.stat().st_size, "sha256": sha, "steps": steps}, indent=2))


if __name__ == "__main__":
    main()
