"""CLI polish from the bad-input sweep: argparse's own errors as one ``error:`` line, ``phantom`` keeping the user's
files, ``segment`` refusing a non-CT image, a changed copy of a shipped model refused, and what ``train`` records
and says on a second Ctrl-C."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import build_parser, main
from CardiacDiffusionLib.cli.segment import CT_LOWEST_HU, refuse_non_ct
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.training.cli import Parser
from CardiacDiffusionLib.training.cli import main as train_main
from CardiacDiffusionLib.training.toy import ToyTask

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
REAL_CTS = sorted((SHARED / "totalseg-ct").glob("*ct*.nii.gz"))


# ---- 1. argparse's errors: one line `error: ...`, exit code 2 -------------------------------------------------------
@pytest.mark.parametrize("argv, said", [
    (["lma", "--scar", "x"], "cardiac-diffusion lma: --scar: invalid int value: 'x'"),
    (["lma", "--slices", "s.nii.gz", "--strain", "s.npy", "--rv-insertion", "1,2", "--out", "o"],
     "cardiac-diffusion lma: --rv-insertion: '1,2': give a point as x,y,z"),
    (["lma", "--slices", "s.nii.gz", "--strain", "s.npy"], "cardiac-diffusion lma: the following arguments are required: --out"),
    (["phantom", "--out", "o", "--bogus"], "cardiac-diffusion phantom: unrecognized arguments: --bogus"),
    (["reconstruct", "--method", "foo"], "cardiac-diffusion reconstruct: --method: invalid choice: 'foo'"),
    (["evaluate", "gap", "--data", "d", "--bogus"], "cardiac-diffusion evaluate gap: unrecognized arguments: --bogus"),
    (["evaluate", "nope"], "cardiac-diffusion evaluate: protocol: invalid choice: 'nope'"),
    (["nope"], "cardiac-diffusion: command: invalid choice: 'nope'"),
    (["train", "toy", "--out", "o", "--bogus"], "cardiac-diffusion train: unrecognized arguments: --bogus"),
])  # fmt: skip
def test_argparse_errors_are_one_error_line(argv, said, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err  # before: a usage block, then `cardiac-diffusion lma: error: ...`
    assert err[0].startswith(f"error: {said}") and err[0].endswith("--help`"), err
    assert not any(tmp_path.iterdir())


def test_every_sub_command_parser_says_errors_in_one_line():
    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    found = list(parsers(build_parser()))
    assert len(found) > 12 and all(isinstance(p, Parser) for p in found)


def test_the_slicer_panels_read_the_argparse_message():
    """The child runner (slicer_adapter/process.py) shows the LAST stderr line: the message, not a usage line."""
    run = subprocess.run([sys.executable, "-m", "CardiacDiffusionLib.cli.main", "lma", "--scar", "x"], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("error: cardiac-diffusion lma: --scar")
    assert "usage" not in run.stderr


def test_training_module_parser_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["toy", "--progress", "fast", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: python -m CardiacDiffusionLib.training: --progress: invalid choice: 'fast'")


# ---- 2. phantom keeps the user's files ------------------------------------------------------------------------------
def test_phantom_keeps_the_users_files_and_replaces_its_own(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "truth.json").write_text('{"mine": 1}')
    assert main(["phantom", "--kind", "ct", "--size", "8", "--out", str(out)]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(f"error: --out {out}: holds truth.json, not written by `phantom`")
    assert (out / "truth.json").read_text() == '{"mine": 1}' and sorted(p.name for p in out.iterdir()) == ["truth.json"]

    mr = tmp_path / "mr"
    (mr / "dicom" / "sax").mkdir(parents=True)
    (mr / "dicom" / "sax" / "IM_0001.dcm").write_bytes(b"a series of the user's")  # else deleted as an earlier run's
    (mr / "sax_image.nii.gz").write_bytes(b"the user's image")
    assert main(["phantom", "--matrix", "16", "--out", str(mr)]) == 2
    said = capsys.readouterr().err.strip()
    assert "holds sax_image.nii.gz, dicom/sax/IM_*.dcm, not written by `phantom`" in said
    assert (mr / "dicom" / "sax" / "IM_0001.dcm").read_bytes() == b"a series of the user's"
    assert (mr / "sax_image.nii.gz").read_bytes() == b"the user's image"

    run = tmp_path / "run"  # an earlier phantom's outputs (either kind) are replaced
    assert main(["phantom", "--kind", "ct", "--size", "8", "--out", str(run)]) == 0
    assert main(["phantom", "--kind", "ct", "--size", "8", "--seed", "3", "--out", str(run)]) == 0
    assert json.loads((run / "truth.json").read_text())["seed"] == 3
    assert main(["phantom", "--matrix", "16", "--no-dicom", "--out", str(run)]) == 0
    assert main(["phantom", "--matrix", "16", "--no-dicom", "--seed", "2", "--out", str(run)]) == 0
    assert json.loads((run / "truth.json").read_text())["seed"] == 2


# ---- 3. segment refuses a non-CT image ------------------------------------------------------------------------------
@pytest.mark.skipif(not REAL_CTS, reason="shared CT data missing")
def test_every_real_ct_and_ct_phantom_passes_the_hounsfield_check():
    from CardiacDiffusionLib.phantoms.ct import make_ct_phantom

    for path in REAL_CTS:  # measured lowest values -1064 and -1207 HU
        image = sitk.ReadImage(str(path))
        refuse_non_ct(image, str(path))
        assert sitk.GetArrayViewFromImage(image).min() < CT_LOWEST_HU - 900
    for seed, size, contrast in ((0, 8, True), (3, 16, False), (1, 32, True)):
        refuse_non_ct(make_ct_phantom(seed, size, contrast=contrast)[0], "phantom")
    image = make_ct_phantom(0, size=96, spacing=2.5)[0]  # a 60 mm crop inside the heart: lowest -793 HU
    refuse_non_ct(sitk.RegionOfInterest(image, [24, 24, 24], [36, 36, 36]), "crop")


def test_mr_images_are_refused_by_the_hounsfield_check(tmp_path):
    from CardiacDiffusionLib.phantoms.scanner import make_subject

    sax = make_subject(0, "ED").sax.to_image()
    with pytest.raises(InputError, match=r"--image sax: values 0\.0001435\.\.1\.364, no air, lung or fat .* an MR image"):
        refuse_non_ct(sax, "sax")
    acdc = sorted((SHARED / "acdc").glob("*.h5"))
    if acdc:
        with h5py.File(acdc[0]) as f:
            mr = sitk.GetImageFromArray(f["image"][()].astype(np.float32))
        with pytest.raises(InputError, match="give the CT image in Hounsfield units"):
            refuse_non_ct(mr, str(acdc[0]))
        z = (sitk.GetArrayFromImage(mr) - sitk.GetArrayFromImage(mr).mean()) / sitk.GetArrayFromImage(mr).std()
        with pytest.raises(InputError):  # z-scored MR: a few negative values, far above any CT's lowest
            refuse_non_ct(sitk.GetImageFromArray(z.astype(np.float32)), "z-scored")


def test_segment_refuses_an_mr_image_in_one_line(tmp_path, capsys):
    from CardiacDiffusionLib.ldm.seg_tasks import N_CLASSES, build_seg_unet
    from CardiacDiffusionLib.models.store import save_model
    from CardiacDiffusionLib.phantoms.scanner import make_subject

    config = {"out_channels": N_CLASSES, "features": [4, 8, 8, 16, 16, 4],
              "input": {"size": 32, "spacing_mm": 5.0, "centre": "labels", "hu_window": [-200, 800]}}  # fmt: skip
    model = tmp_path / "ctseg.safetensors"
    save_model(build_seg_unet(config), model, config, "ctseg_unet")
    mr = tmp_path / "sax.nii.gz"
    sitk.WriteImage(make_subject(0, "ED").sax.to_image(), str(mr))
    before = hashlib.sha256(mr.read_bytes()).hexdigest()
    out = tmp_path / "seg"
    assert main(["segment", "--model", str(model), "--image", str(mr), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --image {mr}: values 0.0001435..1.364, no air") and "Hounsfield" in err[0], err
    assert not out.exists() and hashlib.sha256(mr.read_bytes()).hexdigest() == before


# ---- 4. a changed copy of a shipped model -------------------------------------------------------------------------
def test_a_bit_flipped_copy_of_a_shipped_model_is_refused(tmp_path, monkeypatch):
    from CardiacDiffusionLib.models.store import find_model, load_model

    monkeypatch.setenv("CARDIAC_DIFFUSION_HOME", str(tmp_path / "home"))
    shipped = Path(find_model("tos-regressor")["path"])
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(shipped, copy)
    assert load_model(copy).checked == "registry sha256 of tos-regressor"  # a byte-identical copy: vouched for
    blob = bytearray(shipped.read_bytes())
    blob[-5] ^= 0x10  # one bit of the last weight
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(blob))
    with pytest.raises(InputError, match=f"model file {flipped} has the header of the shipped model tos-regressor but "
                       "not its bytes .* damaged or changed copy; use the name tos-regressor"):  # fmt: skip
        load_model(flipped)  # before: loaded, with only a "not registered" warning
    assert shipped.read_bytes() != bytes(blob)


# ---- 5. train: the command recorded, a second Ctrl-C ----------------------------------------------------------------
def test_the_recorded_command_is_the_one_run(tmp_path):
    from CardiacDiffusionLib.models.store import read_model_header

    steps = ["--progress", "none", "task=toy", "train.steps=2"]
    assert main(["train", "--out", str(tmp_path / "a"), *steps]) == 0
    meta = read_model_header(tmp_path / "a" / "model.safetensors")[2]
    assert meta["training_command"] == f"cardiac-diffusion train --out {tmp_path / 'a'} {' '.join(steps)}"  # not pytest's
    assert train_main(["--out", str(tmp_path / "b"), *steps]) == 0
    meta = read_model_header(tmp_path / "b" / "model.safetensors")[2]
    assert meta["training_command"] == f"python -m CardiacDiffusionLib.training --out {tmp_path / 'b'} {' '.join(steps)}"


class TwiceInterrupted(ToyTask):
    """Ctrl-C twice during its third loss: the runner stops at once (KeyboardInterrupt)."""

    calls = 0

    def loss(self, model, batch):
        TwiceInterrupted.calls += 1
        if TwiceInterrupted.calls == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the runner's handler: stop after this step
            os.kill(os.getpid(), signal.SIGINT)  # again: stop now
        return super().loss(model, batch)


def test_a_second_ctrl_c_under_the_training_module_ends_in_one_line(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "run"), "--progress", "none", f"task={__name__}:TwiceInterrupted", "train.steps=50"]
    try:
        code = train_main(argv)
    except KeyboardInterrupt:  # before: the raw traceback of `python -m CardiacDiffusionLib.training`
        code = "KeyboardInterrupt"
    assert code == 130 and capsys.readouterr().err.strip().splitlines() == ["cancelled"]
