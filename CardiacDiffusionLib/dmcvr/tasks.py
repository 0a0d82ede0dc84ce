"""Training-runner tasks of DMCVR (registered on import, and listed lazily in ``BUILTIN_TASKS``).

- ``dmcvr_seg``: the morphology net alone, Dice + focal loss (stage 1).
- ``dmcvr_diffusion``: semantic encoder + conditional denoiser, epsilon MSE, morphology net
  frozen (stage 2, ``train.init_from`` = the stage-1 model).

Both train a whole :class:`DMCVRModel` (only the stage's parameters move), so each stage exports
a complete ``dmcvr`` model-store file. Validation uses ACDC patients 061-080 (never trained on).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..training.task import Task, register_task
from .data import SaxSliceDataset
from .losses import diffusion_loss, seg_loss
from .model import DEFAULT_CONFIG, DMCVRModel


class _DMCVRTask(Task):
    architecture = "dmcvr"
    model_signature, data_signature = DEFAULT_CONFIG, SaxSliceDataset  # data.val_patients: validation only, untyped

    def build_model(self, config: dict) -> nn.Module:
        return DMCVRModel(config)

    #: dataset defaults of the stage (the ``data`` section overrides them)
    data_defaults: dict = {}

    def build_dataset(self, config: dict) -> SaxSliceDataset:
        self.data_config = {**self.data_defaults, **config}
        return SaxSliceDataset(**{k: v for k, v in self.data_config.items() if k != "val_patients"})

    def _val_batch(self, count: int = 32) -> dict | None:
        """Up to ``count`` labelled, unaugmented validation crops (ACDC 061-080), cached; None without ACDC."""
        if getattr(self, "_val", None) is None:
            cfg = self.data_config
            if not cfg.get("root"):
                return None
            keep = ("root", "size", "spacing_mm")
            patients = cfg.get("val_patients", list(range(61, 81)))
            data = SaxSliceDataset(**{k: cfg[k] for k in keep if k in cfg}, patients=patients,
                                   labelled_only=True, augment=False)  # fmt: skip
            pick = np.linspace(0, len(data) - 1, min(count, len(data))).round().astype(int)
            items = [data[int(i)] for i in pick]
            self._val = {k: torch.stack([it[k] for it in items]) for k in ("image", "label")}
        return self._val


class DMCVRSegTask(_DMCVRTask):
    """Stage 1: the morphology (segmentation) net, Dice + focal loss."""

    data_defaults = {"labelled_only": True}

    def parameters(self, model: DMCVRModel):
        return model.morphology_parameters()

    def loss(self, model: DMCVRModel, batch) -> torch.Tensor:
        return seg_loss(model, batch["image"], batch["label"])

    def validate(self, model: DMCVRModel, step: int) -> dict[str, float]:
        batch = self._val_batch(64)
        if batch is None:
            return {}
        device = next(model.parameters()).device
        pred = model.morph_net(batch["image"].to(device)).argmax(1).cpu()
        out = {}
        for value, name in ((1, "LV"), (2, "MYO"), (3, "RV")):
            a, b = pred == value, batch["label"] == value
            denom = int(a.sum() + b.sum())
            out[f"val_dice_{name}"] = 2 * int((a & b).sum()) / denom if denom else float("nan")
        return out


class DMCVRDiffusionTask(_DMCVRTask):
    """Stage 2: semantic encoder + denoiser with the simple noise loss; morphology net frozen."""

    def parameters(self, model: DMCVRModel):
        return model.diffusion_parameters()

    def loss(self, model: DMCVRModel, batch) -> torch.Tensor:
        return diffusion_loss(model, batch["image"])

    def validate(self, model: DMCVRModel, step: int) -> dict[str, float]:
        batch = self._val_batch(32)
        if batch is None:
            return {}
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(0)  # same timesteps and noise every time
        return {"val_loss": float(diffusion_loss(model, batch["image"].to(device), generator=generator))}


register_task("dmcvr_seg", DMCVRSegTask)
register_task("dmcvr_diffusion", DMCVRDiffusionTask)
