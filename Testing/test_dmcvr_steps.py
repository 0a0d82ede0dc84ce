"""dmcvr's ``steps`` below the measured knee: a one-line QualityWarning (the steps, what was measured, the minimum),
the reconstruction still made; none at or above the minimum, nor at the default. The shipped model on a small
phantom stack (3 SAX slices, 64 x 64 of 3.125 mm, to 2 mm): the real code path, nothing patched; where only the
warning is asked, the run is cancelled at its first DDIM step (the cancel users have) to keep the test short.

The numbers behind the knee: docs/models/dmcvr.md (Steps), scripts/eval_dmcvr_steps.py."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.dmcvr import reconstruction as R
from CardiacDiffusionLib.dmcvr.ddim import Cancelled
from CardiacDiffusionLib.errors import QualityWarning
from CardiacDiffusionLib.models.store import list_models
from CardiacDiffusionLib.phantoms.mr import MRPhantom
from CardiacDiffusionLib.phantoms.scanner import acquire_sax
from CardiacDiffusionLib.reconstruction.volume import reconstruct

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "docs" / "models" / "dmcvr_eval"
needs_model = pytest.mark.skipif(not any(m["workflow"] == "dmcvr" for m in list_models()), reason="no DMCVR model")


@pytest.fixture(scope="module")
def small_stack():
    """Three mid-ventricular slices 10 mm apart (two gaps of four 2 mm slices each to generate)."""
    stack = acquire_sax(MRPhantom(0, "ED"), gap_mm=10.0, pixel_mm=3.125, matrix=64, noise_sigma=0.03)
    middle = stack.n // 2
    return stack.subset([middle - 1, middle, middle + 1])


def steps_said(caught) -> list[str]:
    said = [str(w.message) for w in caught if issubclass(w.category, QualityWarning)]
    return [m for m in said if m.startswith("dmcvr steps")]


def warned_before_cancel(stack, steps: int, strength: float | None = None) -> list[str]:
    """The steps warnings of a dmcvr run cancelled at its first DDIM step."""
    targets = np.linspace(stack.positions[0], stack.positions[-1], 11)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(Cancelled):
        warnings.simplefilter("always")
        R.dmcvr(stack, targets, steps=steps, strength=strength, device="cpu", cancel=lambda: True)
    return steps_said(caught)


@needs_model
def test_too_few_steps_warn_in_one_line_and_still_reconstruct(small_stack, one_torch_thread):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = reconstruct(small_stack, "dmcvr", 2.0, steps=2, device="cpu")
    said = steps_said(caught)
    assert len(said) == 1, said
    message = said[0]
    assert "\n" not in message
    assert message.startswith("dmcvr steps 2:")
    assert f"use at least {R.MIN_STEPS} steps" in message
    assert "Dice" in message  # what was measured
    labels = sitk.GetArrayFromImage(result.labels)
    assert labels.shape[0] == 11 and np.isin([1, 2, 3], labels).all()  # a whole 2 mm volume, all three labels


@needs_model
def test_warning_below_the_minimum_only(small_stack, one_torch_thread):
    assert len(warned_before_cancel(small_stack, R.MIN_STEPS - 1)) == 1
    assert warned_before_cancel(small_stack, R.MIN_STEPS) == []
    assert warned_before_cancel(small_stack, R.DEFAULT_STEPS) == []
    assert warned_before_cancel(small_stack, 1) == []  # one step only inverts to t = 0 (measured: Dice near the default's)
    # a partial inversion's steps are shorter: the minimum scales with the strength (measured, phantoms 0-1 LAX Dice:
    # strength 0.1 with 2 steps 0.931, as 25 steps' 0.925; strength 0.5 with 2 steps 0.894, as full inversion's 3-5)
    assert warned_before_cancel(small_stack, 2, strength=0.1) == []
    assert len(warned_before_cancel(small_stack, 2, strength=0.5)) == 1


def test_the_rule_follows_the_measured_knee():
    assert 2 <= R.MIN_STEPS <= R.DEFAULT_STEPS  # the default never warns
    assert str(R.MIN_STEPS) in R.steps_warning(3) and "steps 3" in R.steps_warning(3)


def steps_table(doc: str) -> dict[str, list[float | None]]:
    block = doc.split("| steps | Dice LV |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = [float(c) if re.fullmatch(r"-?\d+(\.\d+)?", c) else None for c in cells[1:]]
    return rows


@pytest.mark.parametrize("doc", ["README.md", "docs/models/dmcvr.md"])
def test_steps_table_is_its_evaluation_json(doc):
    """The table of README.md and the model card: each row the stored run's means (3 decimals; PSNR 2, seconds as
    given), and the warning's minimum the first setting from which dmcvr is ahead of shape on LV and RV."""
    rows = steps_table((ROOT / doc).read_text())
    gap, lax = json.loads((EVAL / "gap_acdc_val_steps.json").read_text()), json.loads((EVAL / "lax_phantoms_steps.json").read_text())
    assert len(rows) == 1 + len([k for k in gap if k.startswith("dmcvr steps")])
    for name, cells in rows.items():
        steps = name.split()[0]
        row, phantom = gap["shape" if steps == "shape" else f"dmcvr steps {steps}"], lax.get(f"dmcvr steps {steps}")
        want = [row["dice"]["LV"], row["dice"]["MYO"], row["dice"]["RV"], row["ssim"]]
        assert np.allclose([cells[0], cells[1], cells[2], cells[4]], want, atol=0.5e-3 + 1e-9, rtol=0), name
        assert cells[3] == pytest.approx(row["psnr"], abs=0.005 + 1e-9) and cells[5] == pytest.approx(row["cpu_s_per_volume"], abs=0.005 + 1e-9)
        if phantom is None:
            assert cells[6] is None and cells[7] is None, name
        else:
            assert cells[6] == pytest.approx(phantom["lax_dice_mean"], abs=0.5e-3 + 1e-9), name
            assert cells[7] == pytest.approx(phantom["cpu_s_per_volume"], abs=0.05 + 1e-9), name
    shape = gap["shape"]["dice"]
    ahead = [int(k.split()[-1]) for k, v in gap.items() if k.startswith("dmcvr steps") and int(k.split()[-1]) > 1
             and v["dice"]["LV"] > shape["LV"] and v["dice"]["RV"] > shape["RV"]]  # fmt: skip
    assert min(ahead) == R.MIN_STEPS
