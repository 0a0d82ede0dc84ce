"""The SyntheticData module's logic without Qt: sample CT image + label pairs from the latent diffusion model.

``SampleJob`` runs ``cardiac-diffusion sample`` as a child process and loads each pair as NEW nodes:
a CT volume (HU) and a segmentation with one named, coloured segment per heart structure (CT
convention, ``labels.CT_LABELS``) and 3D surfaces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from ..labels import CT_LABELS, MR_LABEL_COLORS
from . import mrml
from .job import CLIJob

DEVICES = ("auto", "cpu", "cuda")
CT_DESCRIPTIONS = {
    "LA": "Left atrium", "LV": "Left ventricle", "RA": "Right atrium", "RV": "Right ventricle",
    "MYO": "LV myocardium", "AO": "Aorta", "PA": "Pulmonary artery", "LAA": "Left atrial appendage",
}  # fmt: skip
#: RGB 0..1: LV, RV and MYO as the MR segments (``labels.MR_LABEL_COLORS``); left atrium crimson, right atrium
#: light blue, aorta yellow, pulmonary artery teal, appendage violet: all 8 >= 13 CIEDE2000 apart (and from black
#: and grey) for normal, protan, deutan and tritan vision (the earlier set: LV and MYO 0.9 apart for protan readers)
CT_COLORS = {
    "LA": (0.75, 0.15, 0.30), "LV": MR_LABEL_COLORS["LV"], "RA": (0.80, 0.80, 1.0), "RV": MR_LABEL_COLORS["RV"],
    "MYO": MR_LABEL_COLORS["MYO"], "AO": (1.0, 0.90, 0.0), "PA": (0.05, 0.75, 0.70), "LAA": (0.25, 0.20, 0.80),
}  # fmt: skip


@dataclass
class SampleResult:
    volumes: list = field(default_factory=list)  # vtkMRMLScalarVolumeNode per pair (HU)
    segmentations: list = field(default_factory=list)  # vtkMRMLSegmentationNode per pair
    info: dict = field(default_factory=dict)  # labels.json: model, seeds, clean-up noise report
    log: list[str] = field(default_factory=list)


class SampleJob(CLIJob):
    """``count`` synthetic pairs; pair ``i`` starts from the noise of ``seed + i`` (reproducible)."""

    command = "sample"
    title = "synthetic data sampling"
    options = {"--n": "Pairs", "--seed": "Seed", "--steps": "DDIM steps", "--device": "Device", "--model": "Model",
               "--no-cleanup": "Clean labels"}  # fmt: skip

    def __init__(
        self, scene, count: int = 1, seed: int = 0, steps: int = 50, device: str = "auto", model: str = "",
        cleanup: bool = True, surfaces: bool = True, python: str | None = None, keep_files: bool = False,
    ):  # fmt: skip
        super().__init__(scene, python, keep_files)
        if not 1 <= int(count) <= 100:
            raise InputError(f"number of pairs must be 1..100, got {count}")
        if int(steps) < 1:
            raise InputError(f"DDIM steps must be at least 1, got {steps}")
        if not 0 <= int(seed) <= 2**63 - 1 - int(count):  # pair i uses the 64-bit torch seed seed + i
            raise InputError(f"seed must be 0..{2**63 - 1 - int(count)}, got {seed}")
        if device not in DEVICES:
            raise InputError(f"device {device!r} is unknown; use one of {DEVICES}")
        self.count, self.seed, self.steps, self.device = int(count), int(seed), int(steps), device
        self.model, self.cleanup, self.surfaces = (model or "").strip(), bool(cleanup), bool(surfaces)

    def _export(self, folder: Path) -> list[str]:
        arguments = ["--n", str(self.count), "--seed", str(self.seed), "--steps", str(self.steps)]
        arguments += ["--device", self.device, "--progress", "json"]
        if self.model:
            arguments += ["--model", self.model]
        if not self.cleanup:
            arguments += ["--no-cleanup"]
        return arguments

    def _load(self, out: Path) -> SampleResult:
        info = json.loads((out / "labels.json").read_text())
        names = {int(value): name for value, name in info.get("labels", {}).items()} or CT_LABELS
        samples = info.get("samples", [])
        if len(samples) != self.count:  # checked before any node is added
            raise InputError(f"the sampler wrote {len(samples)} pairs, {self.count} were asked for")
        result = SampleResult(info=info, log=list(self.log))
        for index, sample in enumerate(samples):
            # the names of ldm.generate.pair_names, not imported: that module needs torch
            image_name, labels_name = f"sample_{index:03d}_image.nii.gz", f"sample_{index:03d}_labels.nii.gz"
            base = f"Synthetic CT seed {sample['seed']}"
            image = sitk.ReadImage(str(out / image_name))
            volume = mrml.volume_node_from_image(self.scene, image, base)
            labels = sitk.ReadImage(str(out / labels_name))
            segmentation = mrml.segmentation_from_labels(
                self.scene, labels, f"{base} segmentation", label_names=names, descriptions=CT_DESCRIPTIONS,
                colors=CT_COLORS, reference_volume=volume, surfaces=self.surfaces,
            )  # fmt: skip
            result.volumes.append(volume)
            result.segmentations.append(segmentation)
        return result
