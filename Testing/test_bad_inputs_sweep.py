"""Bad inputs found by a sweep of the commands other than ``reconstruct``: each ends in one ``error:`` line naming the
input, exit code 2, before the work and with the inputs unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import error_line, lma_phantom_files

ACDC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"
LDM = Path(__file__).resolve().parents[1] / "Resources" / "models" / "ldm-ct-phantom-32.safetensors"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_lma_frame_interval_too_long_is_refused_not_a_traceback(tmp_path, capsys):
    # --frame-ms 1e308 overflowed the frame times to inf: NaN TOS, then a ValueError from the JSON writer after the
    # meshes and the bullseye were written
    folder, _ = lma_phantom_files(tmp_path)
    out = tmp_path / "lma"
    said = error_line(["lma", "--slices", str(folder / "labels.nii.gz"), "--strain", str(folder / "strain.npy"),
                       "--frame-ms", "1e308", "--out", str(out)], capsys)  # fmt: skip
    assert said == ("error: frame_ms (--frame-ms): 1e+308 ms puts the last of 40 frames beyond any time; give the "
                    "strain frame interval in ms, e.g. 17 for cine DENSE")  # fmt: skip
    assert not out.exists()


def test_lma_folder_given_for_the_strain_or_the_tos_table_is_named_a_folder(tmp_path, capsys):
    folder, _ = lma_phantom_files(tmp_path)
    base = ["lma", "--slices", str(folder / "labels.nii.gz"), "--out", str(tmp_path / "lma")]
    said = error_line([*base, "--strain", str(folder)], capsys)  # was "file not found" for a folder that exists
    assert said == f"error: --strain: {folder} is a folder; give the strain .npy file itself"
    said = error_line([*base, "--tos-csv", str(folder)], capsys)
    assert said == f"error: --tos-csv: {folder} is a folder; give the TOS table's .csv file itself"


def test_lma_sadir_refine_beyond_the_limit_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    import CardiacDiffusionLib.sadir.reconstruct as sadir

    def ran(*args, **kwargs):  # 10^9 steps ran for hours with no progress line
        raise AssertionError("the refinement ran")

    monkeypatch.setattr(sadir, "refine", ran)
    folder, _ = lma_phantom_files(tmp_path)
    said = error_line(["lma", "--slices", str(folder / "labels.nii.gz"), "--strain", str(folder / "strain.npy"),
                       "--method", "sadir", "--device", "cpu", "--sadir-refine", "1000000000",
                       "--out", str(tmp_path / "lma")], capsys)  # fmt: skip
    assert said == "error: --sadir-refine 1000000000: give 0 (off) to 1000 test-time fit steps (default 20)"


def test_segment_centre_far_outside_the_image_is_refused_not_a_traceback(tmp_path, capsys):
    # 1e300 mm: the cube's index range overflowed the int cast and passed as "inside", then SimpleITK raised TypeError
    from CardiacDiffusionLib.ldm.seg_tasks import N_CLASSES, build_seg_unet
    from CardiacDiffusionLib.models.store import save_model
    from CardiacDiffusionLib.phantoms.ct import make_ct_phantom

    features = [4, 8, 8, 16, 16, 4]
    config = {"out_channels": N_CLASSES, "features": features,
              "input": {"size": 32, "spacing_mm": 5.0, "centre": "labels", "hu_window": [-1000.0, 1000.0]}}  # fmt: skip
    model = tmp_path / "ctseg.safetensors"
    save_model(build_seg_unet(config), model, config, "ctseg_unet")
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(make_ct_phantom(0, size=32)[0], str(ct))
    for centre in ("1e300,0,0", "0,-1e20,0"):
        said = error_line(["segment", "--model", str(model), "--image", str(ct), "--centre", centre, "--device", "cpu",
                           "--out", str(tmp_path / "seg")], capsys)  # fmt: skip
        assert "the model's 160 mm cube there misses the image" in said, said
    assert not (tmp_path / "seg").exists()


def test_train_config_that_is_not_text_is_refused(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"\xff\xfe\x00task: toy")  # e.g. a UTF-16 export or a binary file: was UnicodeDecodeError
    said = error_line(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--progress", "none"], capsys)
    assert said.startswith(f"error: --config {config}: not a text file") and "YAML or JSON text" in said
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("names", "said"), [
    (("a", "a"), "2 stages are named 'a'; give each stage its own name"),  # the second was passed over as "done"
    (("../up", "b"), "stage name '../up': use letters, digits"),  # a folder outside --out
])  # fmt: skip
def test_train_recipe_stage_names_are_unique_folder_names(tmp_path, capsys, names, said):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("stages:\n" + "".join(f"  - {{name: {n}, task: toy, train: {{steps: 2}}}}\n" for n in names))
    line = error_line(["train", str(recipe), "--out", str(tmp_path / "run"), "--progress", "none"], capsys)
    assert line.startswith(f"error: train {recipe}: ") and said in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "up").exists()


def test_lax_dice_acdc_volume_is_not_told_to_pass_the_option_it_has(tmp_path, capsys):
    folder, _ = lma_phantom_files(tmp_path)
    labels = sitk.ReadImage(str(folder / "labels.nii.gz"))
    values = sitk.GetArrayFromImage(labels)
    acdc = sitk.GetImageFromArray(np.choose(values, [0, 3, 2, 1]).astype(np.uint8))  # 1 <-> 3: ACDC numbering
    acdc.CopyInformation(labels)
    volume = tmp_path / "acdc_volume.nii.gz"
    sitk.WriteImage(acdc, str(volume))
    said = error_line(["lax-dice", "--labels", str(volume), "--lax-labels", str(volume), "--label-convention", "acdc"],
                      capsys)  # was "pass --label-convention acdc", which was given  # fmt: skip
    assert said.startswith(f"error: --labels {volume}: looks ACDC-numbered") and "applies to --lax-labels only" in said
    assert "swap labels 1 and 3" in said


@pytest.mark.skipif(not (ACDC / "patient001_frame01.h5").is_file(), reason=f"shared ACDC data missing: {ACDC}")
def test_evaluate_gap_out_never_replaces_a_data_volume(tmp_path, capsys):
    # --out was checked as a file only: the JSON table replaced the HDF5 volume it had read
    data = tmp_path / "data"
    data.mkdir()
    volume = Path(shutil.copy(ACDC / "patient001_frame01.h5", data))
    before = volume.read_bytes()
    said = error_line(["evaluate", "gap", "--data", str(data), "--methods", "nearest", "--out", str(volume)], capsys)
    assert said == (f"error: --out: writing {volume} would overwrite the input {volume}; choose another output "
                    "folder or file")  # fmt: skip
    assert volume.read_bytes() == before


def test_evaluate_ldm_out_never_replaces_the_model(tmp_path, capsys):
    model = Path(shutil.copy(LDM, tmp_path))
    before = model.read_bytes()
    # --repeats 0 is refused too, after --out: the output check comes first, before any work
    said = error_line(["evaluate", "ldm", "--model", str(model), "--repeats", "0", "--out", str(model)], capsys)
    assert said == f"error: --out: writing {model} would overwrite the input {model}; choose another output folder or file"
    assert model.read_bytes() == before


def test_evaluate_ldm_counts_beyond_memory_are_refused_before_the_work(capsys, monkeypatch):
    import CardiacDiffusionLib.ldm.evaluate as ldm_evaluate

    def ran(*args, **kwargs):  # 10^8 phantoms were made one by one, all held in memory, with no end in sight
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr(ldm_evaluate, "evaluate_ldm", ran)
    said = error_line(["evaluate", "ldm", "--real", "100000000"], capsys)
    assert said.startswith("error: --real 100000000 --generated 24 --test 8: 100000032 volumes of 32^3 voxels would "
                           "need about 1.57e+05 GB of memory")  # fmt: skip
    assert said.endswith("give fewer (defaults 8, 24, 8)")


def test_demo_unknown_device_is_refused_whatever_the_methods(tmp_path, capsys):
    # checked only when dmcvr or the synthetic pairs would use it: --device tpu ran the whole demo
    out = tmp_path / "demo"
    said = error_line(["demo", "--device", "tpu", "--methods", "nearest", "--skip", "lma", "synthetic", "--out", str(out)],
                      capsys)  # fmt: skip
    assert said == "error: --device tpu: unknown device; use one of auto, cpu, cuda, cuda:N, mps"
    assert not out.exists()


def test_models_add_card_that_is_not_text_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CARDIAC_DIFFUSION_HOME", str(tmp_path / "home"))
    card = tmp_path / "card.yaml"
    card.write_bytes(b"\xff\xfe\x00version: 1")  # was UnicodeDecodeError
    said = error_line(["models", "add", "--name", "mine", "--workflow", "ldm", "--file", str(LDM), "--card", str(card)],
                      capsys)  # fmt: skip
    assert said.startswith(f"error: --card {card}: expected a YAML/JSON mapping with keys among")
    assert not (tmp_path / "home" / "models" / "mine.safetensors").exists()


def test_lma_out_keeps_the_users_files_named_as_its_outputs(tmp_path, capsys):
    # a segments.csv or lma.json of the user's was replaced; an earlier lma run's outputs still are
    folder, _ = lma_phantom_files(tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    (out / "segments.csv").write_text("the user's table\n")
    argv = ["lma", "--slices", str(folder / "labels.nii.gz"), "--strain", str(folder / "strain.npy"), "--out", str(out)]
    said = error_line(argv, capsys)
    assert said == (f"error: --out {out}: holds segments.csv, not written by `lma` (no lma.json of an lma run beside "
                    "them); they are kept: choose a new or empty folder")  # fmt: skip
    assert (out / "segments.csv").read_text() == "the user's table\n" and not (out / "lma.json").exists()
    (out / "segments.csv").unlink()
    from CardiacDiffusionLib.cli.main import main

    assert main(argv) == 0 and main(argv) == 0  # a second run replaces the first's outputs
