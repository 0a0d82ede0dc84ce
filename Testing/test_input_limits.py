"""Asking for too much, or for numbers that make no sense: reconstruct, lma and sample refuse them before the work,
naming the option and what fits, and leave the inputs and the user's files in --out as they were."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.reconstruction.volume import output_bytes
from CardiacDiffusionLib.utils.device import available_memory, run_batched
from helpers import lma_phantom_files

ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"
H5 = ACDC / "patient001_frame01.h5"
needs_acdc = pytest.mark.skipif(not H5.is_file(), reason=f"shared ACDC data missing: {H5}")


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(argv: list[str], capsys) -> str:
    """The one error line of a command that must end with exit code 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    return err[-1]


@pytest.fixture(scope="module")
def acdc_stack():
    from CardiacDiffusionLib.io.volumes import read_stack

    return read_stack(str(H5), name="--sax")


# ---- reconstruct: an output grid that does not fit in memory -------------------------------------------------------
@needs_acdc
@pytest.mark.parametrize("method", ["shape", "dmcvr"])
def test_a_grid_beyond_this_machines_memory_is_refused_naming_a_spacing_that_fits(method, acdc_stack, tmp_path,
                                                                                   capsys):  # fmt: skip
    """--spacing 0.0001 on ACDC (256 x 216, 90 mm): 900 011 slices, 796 GB with shape; said with the machine's
    available memory and a spacing that fits, before anything is allocated or written (was 'at least 0.1')."""
    before = digest(H5)
    out = tmp_path / "out"
    err = refused(["reconstruct", "--method", method, "--sax", str(H5), "--spacing", "0.0001", "--out", str(out)], capsys)
    available = available_memory()
    assert err.startswith("error: --spacing 0.0001: 900011 output slices of 256 x 216 pixels over 90 mm")
    need = float(err.split("would need ")[1].split(" GB")[0])
    assert need == pytest.approx(900011 * 256 * 216 * (16 if method == "shape" else 24) / 1e9, rel=2e-3)
    said = float(err.split("this machine has ")[1].split(" GB")[0])
    assert said == pytest.approx(available / 1e9, rel=0.2)  # MemAvailable moves a little between the two reads
    fits = float(err.split("give --spacing ")[1].split(" mm or more")[0])  # 0.100 here: the floor; 901 slices fit
    assert 0.1 <= fits <= 90 and output_bytes(acdc_stack, fits, method) <= 1.2 * available
    assert digest(H5) == before and not out.exists()


@needs_acdc
def test_the_spacing_offered_is_the_finest_that_fits_the_memory_given(acdc_stack):
    """The limit follows the memory available: with 0.25 GB the finest shape grid is the one that fits, and one
    step finer does not; dmcvr's fixed work alone above it says so instead of offering a spacing."""
    from CardiacDiffusionLib.reconstruction.volume import planned_targets

    budget = 250_000_000
    with pytest.raises(InputError, match=r"give --spacing (\d\.\d{3}) mm or more") as info:
        planned_targets(acdc_stack, 0.1, "shape", available=budget)
    fits = float(info.value.args[0].split("give --spacing ")[1].split(" mm")[0])
    assert output_bytes(acdc_stack, fits, "shape") <= budget < output_bytes(acdc_stack, fits - 0.001, "shape")
    assert fits == 0.32  # 250e6 B / (256 * 216 * 16 B) = 282 slices over 90 mm
    assert len(planned_targets(acdc_stack, fits, "shape", available=budget)) == 282
    with pytest.raises(InputError, match="close other programs or use a method that needs less"):
        planned_targets(acdc_stack, 1.0, "dmcvr", available=budget)


@needs_acdc
@pytest.mark.parametrize("method", ["nearest", "linear", "shape"])
def test_the_memory_estimate_bounds_what_the_classical_methods_allocate(acdc_stack, method):
    """Cross-check of the estimate on a real computation: numpy's peak while reconstructing ACDC at 0.5 mm
    (181 slices; 5-12 B/voxel measured) stays under output_bytes (16 B/voxel)."""
    from CardiacDiffusionLib.reconstruction.volume import reconstruct

    tracemalloc.start()
    try:
        result = reconstruct(acdc_stack, method, 0.5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.image.GetSize() == (216, 256, 181)
    assert 4 * 216 * 256 * 181 < peak <= output_bytes(acdc_stack, 0.5, method)


# ---- reconstruct: dmcvr's numbers named by their options ----------------------------------------------------------
@needs_acdc
@pytest.mark.parametrize("option, value, said", [
    ("--steps", "0", "--steps 0: give at least 1 DDIM step"),
    ("--steps", "-3", "--steps -3: give at least 1 DDIM step"),
    ("--steps", "100000", "--steps 100000: at most 1000 DDIM steps at strength 1"),
    ("--strength", "0", "--strength 0.0: give the fraction of the diffusion schedule inverted"),
    ("--strength", "nan", "--strength nan: give the fraction"),
    ("--shape-prior", "1", "--shape-prior 1.0: give a weight from 0"),
])  # fmt: skip
def test_dmcvr_numbers_that_make_no_sense_are_refused_by_option(option, value, said, tmp_path, capsys):
    """They were 'dmcvr steps: 0; expected 1..1000', naming no option (the Slicer panel maps options to labels)."""
    out = tmp_path / "out"
    err = refused(["reconstruct", "--method", "dmcvr", "--sax", str(H5), option, value, "--device", "cpu",
                   "--out", str(out)], capsys)  # fmt: skip
    assert err == f"error: {said}" or err.startswith(f"error: {said}")
    assert not out.exists()


@needs_acdc
def test_steps_at_a_partial_strength_are_bounded_by_its_schedule(tmp_path, capsys):
    err = refused(["reconstruct", "--method", "dmcvr", "--sax", str(H5), "--steps", "101", "--strength", "0.1",
                   "--device", "cpu", "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert err.startswith("error: --steps 101: at most 100 DDIM steps at strength 0.1")


def test_whole_numbers_only_for_steps(tmp_path, capsys):
    with pytest.raises(SystemExit) as code:
        main(["reconstruct", "--method", "dmcvr", "--sax", "x.nii.gz", "--steps", "2.5", "--out", str(tmp_path)])
    assert code.value.code == 2 and "--steps: invalid int value: '2.5'" in capsys.readouterr().err


@needs_acdc
def test_cuda_asked_for_where_there_is_none(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = refused(["reconstruct", "--method", "dmcvr", "--sax", str(H5), "--steps", "2", "--device", "cuda",
                   "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert err.startswith("error: CUDA not available on this machine") and "--device cpu" in err


# ---- batch sizes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, -3, 2.5, None])
def test_a_batch_size_below_one_or_fractional_is_refused(size):
    """0 and -3 ran silently as batches of 1."""
    import torch

    with pytest.raises(InputError, match=f"batch size {size}: give a whole number of at least 1"):
        run_batched(lambda x: x * 2, torch.arange(5.0), size)


def test_a_huge_batch_is_one_batch_with_the_same_result():
    import torch

    items = torch.arange(7.0)
    assert torch.equal(run_batched(lambda x: x * 2, items, 10**12), run_batched(lambda x: x * 2, items, 3))


# ---- lma -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lma_inputs(tmp_path_factory):
    """The activation phantom's labels (11 slices, 9 with myocardium) and strain, as files."""
    return lma_phantom_files(tmp_path_factory.mktemp("lma"))


@pytest.mark.parametrize("point, where", [
    ("1000,1000,1000", "mm beyond the first slice"),
    ("-35.14,25.16,23.72", "mm beyond the first slice"),  # the true insertion of slice 3 given in RAS
    ("35.14,-25.16,-300", "mm beyond the last slice"),
])  # fmt: skip
def test_an_rv_insertion_outside_the_image_is_refused(lma_inputs, point, where, tmp_path, capsys):
    """A point outside the SAX image set the sector origin from a direction the image never showed: the map was
    written without a word."""
    folder, case = lma_inputs
    labels, strain = folder / "labels.nii.gz", folder / "strain.npy"
    before = digest(labels), digest(strain)
    out = tmp_path / "out"
    err = refused(["lma", "--slices", str(labels), "--strain", str(strain), "--rv-insertion", point,
                   "--out", str(out)], capsys)  # fmt: skip
    assert err.startswith(f"error: --rv-insertion {point}: lies outside the SAX image") and where in err
    assert "Slicer shows RAS" in err and (digest(labels), digest(strain)) == before and not out.exists()


def test_an_rv_insertion_inside_the_image_is_taken(lma_inputs):
    from CardiacDiffusionLib.activation.pipeline import check_in_view

    _, case = lma_inputs
    check_in_view(case.stack, case.frame.insertion_points, "--rv-insertion")  # every slice's own: no error
    with pytest.raises(InputError, match=r"at column -?\d+, row -?\d+ of a 96 x 96 image"):
        check_in_view(case.stack, case.frame.insertion_points[4] + 200 * case.stack.row_dir, "--rv-insertion")


@pytest.mark.parametrize("argv, said", [
    (["--late-percentile", "150"], "error: --late-percentile 150.0: give a percentile above 0 and below 100"),
    (["--late-percentile", "nan"], "error: --late-percentile nan: give a percentile above 0 and below 100"),
    (["--spacing", "0.0001"], "error: --spacing 0.0001: 1000010 output slices of 96 x 96 pixels over 100 mm would need"),
])  # fmt: skip
def test_lma_numbers_refused_by_option_before_the_work(lma_inputs, argv, said, tmp_path, capsys):
    folder, _ = lma_inputs
    out = tmp_path / "out"
    err = refused(["lma", "--slices", str(folder / "labels.nii.gz"), "--strain", str(folder / "strain.npy"), *argv,
                   "--out", str(out)], capsys)  # fmt: skip
    assert err.startswith(said) and not out.exists()


# ---- sample: the user's own files in --out ------------------------------------------------------------------------
@pytest.mark.parametrize("own", ["labels.json", "sample_007_image.nii.gz"])
def test_sample_keeps_the_users_files_in_out(own, tmp_path, capsys):
    """Every sample_* file and any labels.json in --out were deleted when the first pair was ready, whoever
    made them; now a folder holding files no earlier run lists is refused before the work, and they stay."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / own).write_text('{"my": "annotations"}')
    (out / "notes.txt").write_text("mine too")
    err = refused(["sample", "--steps", "1", "--device", "cpu", "--out", str(out)], capsys)
    assert err.startswith(f"error: --out {out}: holds ") and "choose a new or empty folder" in err
    assert (out / own).read_text() == '{"my": "annotations"}' and (out / "notes.txt").read_text() == "mine too"
    assert sorted(p.name for p in out.iterdir()) == sorted([own, "notes.txt"])


def test_an_earlier_sample_run_is_replaced_and_other_files_kept(tmp_path):
    """An earlier run's pairs and labels.json are what a new run removes; a file of the user's beside them stays."""
    from CardiacDiffusionLib.ldm.generate import earlier_run, write_pairs

    out = tmp_path / "out"
    pair = {"hu": np.zeros((4, 4, 4)), "labels": np.zeros((4, 4, 4), np.uint8), "seed": 0,
            "noise_before": {}, "noise_after": {}}  # fmt: skip
    write_pairs(out, [pair, {**pair, "seed": 1}], 2.0, {})
    (out / "notes.txt").write_text("mine")
    assert sorted(p.name for p in earlier_run(out)) == ["labels.json", *[f"sample_00{i}_{k}.nii.gz" for i in (0, 1)
                                                                          for k in ("image", "labels")]]  # fmt: skip
    write_pairs(out, [{**pair, "seed": 5}], 2.0, {})
    assert sorted(p.name for p in out.iterdir()) == ["labels.json", "notes.txt", "sample_000_image.nii.gz",
                                                     "sample_000_labels.nii.gz"]  # fmt: skip
    assert [s["seed"] for s in json.loads((out / "labels.json").read_text())["samples"]] == [5]
