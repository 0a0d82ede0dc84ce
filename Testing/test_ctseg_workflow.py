"""``train ctseg`` (ldm/seg_tasks.py): masked-image SSL on synthetic CT pairs, then an 8-label 3D UNet fine-tuned on
real + synthetic pairs, on the user's own NIfTI folders; CT phantoms as the real pairs, `sample` output as synthetic."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.labels import CT_LABELS
from CardiacDiffusionLib.ldm.seg_tasks import CTSegData, FinetuneTask, MixedPairs, Pairs, load_pair
from CardiacDiffusionLib.ldm.ssl import ENCODER, encoder_state
from CardiacDiffusionLib.metrics import dice
from CardiacDiffusionLib.models.store import load_model, sha256_file
from CardiacDiffusionLib.phantoms.ct import make_ct_phantom
from CardiacDiffusionLib.training.runner import train
from CardiacDiffusionLib.training.workflows import available, stage_configs

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py
ROOT = Path(__file__).resolve().parents[1]
SMALL = "model.features=[4,8,8,16,16,4]"  # the preset's UNet, thinner: seconds per run


def write_pair(folder: Path, name: str, image: sitk.Image, labels: sitk.Image) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{name}_image.nii.gz", folder / f"{name}_labels.nii.gz"
    sitk.WriteImage(image, str(paths[0]))
    sitk.WriteImage(labels, str(paths[1]))
    return paths


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """3 real phantom pairs (one on a 48^3, 3.3 mm grid: resampled) and 2 pairs of the shipped LDM (`sample`)."""
    root = tmp_path_factory.mktemp("ctseg")
    for seed, size in ((0, 32), (1, 32), (2, 48)):
        write_pair(root / "real", f"case{seed}", *make_ct_phantom(seed, size=size)[:2])
    assert main(["sample", "--n", "2", "--steps", "2", "--device", "cpu", "--out", str(root / "synthetic")]) == 0
    return root / "real", root / "synthetic"


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def run(out: Path, *args: str) -> int:
    return main(["train", "ctseg", "--out", str(out), "--progress", "none", "--device", "cpu", *args])


def log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_both_stages_train_export_store_models_and_the_ssl_encoder_is_the_finetune_start(folders, tmp_path):
    real, synthetic = folders
    before = digest(real), digest(synthetic)
    data = [f"data.real={real}", f"data.synthetic={synthetic}", SMALL]
    assert run(tmp_path / "run", *data, "train.steps=2", "train.validate_every=2", "train.checkpoint_every=2") == 0
    assert (digest(real), digest(synthetic)) == before  # inputs untouched
    ssl_path, ft_path = tmp_path / "run" / "ssl" / "model.safetensors", tmp_path / "run" / "finetune" / "model.safetensors"
    ssl, ft = load_model(ssl_path), load_model(ft_path)  # rebuilt from the store's architecture, hash checked
    assert ssl.architecture == ft.architecture == "ctseg_unet" and "content sha256" in ft.checked
    assert ssl.module.state_dict()["final_conv.weight"].shape[0] == 1
    assert ft.module.state_dict()["final_conv.weight"].shape[0] == len(CT_LABELS) + 1
    assert ft.config["input"]["size"] == 32 and ft.config["input"]["spacing_mm"] == 5.0
    assert ft.config["encoder"] == {"from": str(ssl_path), "sha256": sha256_file(ssl_path)}
    val = [r for r in log(ft_path.with_name("train_log.jsonl")) if r.get("stage") == "val"]
    assert [r["step"] for r in val] == [2] and {f"val_dice_{n}" for n in CT_LABELS.values()} < set(val[0])
    assert all(v is None or 0 <= v <= 1 for k, v in val[0].items() if k.startswith("val_dice"))
    assert any(r.get("stage") == "val" and r["val_restore_mse"] > 0 for r in log(ssl_path.with_name("train_log.jsonl")))

    # step 0 of finetune: a run that cannot move its weights (lr 0) exports exactly the SSL encoder ...
    frozen = [*data, "train.steps=1", "optim.lr=0", "--stage", "finetune"]
    assert run(tmp_path / "lr0", *frozen, f"finetune:model.encoder_from={ssl_path}") == 0
    start = encoder_state(load_model(tmp_path / "lr0" / "finetune" / "model.safetensors").module)
    trained = encoder_state(ssl.module)
    assert set(start) == set(trained) and {k.split(".")[0] for k in start} == set(ENCODER)
    assert all(torch.equal(start[k], trained[k]) for k in start)
    # ... which SSL changed: the same run without SSL (skipped with encoder_from=null) starts elsewhere
    assert run(tmp_path / "scratch", *frozen, "finetune:model.encoder_from=null") == 0
    scratch = encoder_state(load_model(tmp_path / "scratch" / "finetune" / "model.safetensors").module)
    assert not all(torch.equal(scratch[k], trained[k]) for k in start)


def test_the_finetuned_net_learns_a_fixed_batch(folders, tmp_path):
    real, _ = folders
    config = {"task": "CardiacDiffusionLib.ldm.seg_tasks:FinetuneTask", "device": "cpu",
              "model": {"features": [4, 8, 8, 16, 16, 4]},
              "data": {"real": str(real), "synthetic_fraction": 0, "val_fraction": 0, "augment": False},
              "optim": {"lr": 1e-2}, "train": {"steps": 20, "batch_size": 3, "ema_decay": 0, "checkpoint_every": 20}}
    train(None, config, tmp_path / "fit", progress="none")  # 3 pairs, batch 3: the same batch every step
    losses = [r["loss"] for r in log(tmp_path / "fit" / "train_log.jsonl")]
    assert len(losses) == 20 and np.mean(losses[-3:]) < 0.8 * losses[0], losses  # measured 0.70
    windows = [np.mean(losses[i : i + 5]) for i in range(0, 20, 5)]
    assert all(b < a for a, b in zip(windows, windows[1:])), losses


def test_each_epoch_mixes_in_the_synthetic_fraction():
    def pairs(n: int, value: int) -> Pairs:
        return Pairs([f"p{i}" for i in range(n)], [np.full((32,) * 3, 100.0 * value, np.float32)] * n,
                     [np.full((32,) * 3, value, np.uint8)] * n)  # fmt: skip

    real, synthetic = pairs(3, 1), pairs(5, 2)
    assert len(MixedPairs(real, None, 0.0, False)) == 3
    np.random.seed(0)
    for fraction, length in ((0.5, 6), (0.75, 12), (0.1, 4)):  # 0.1 of 3 rounds to 0: at least one
        data = MixedPairs(real, synthetic, fraction, False)
        items = [data[i] for i in range(len(data))]
        flags = [float(d["synthetic"]) for d in items]
        assert len(data) == length and sum(flags) == length - 3
        assert all(int(d["labels"].max()) == (2 if f else 1) for d, f in zip(items, flags))  # flagged = synthetic


def test_without_flips_no_item_is_mirrored_and_only_that_differs():
    image, labels, _ = make_ct_phantom(0, size=32)  # LV left of RV (+x, LPS), LA posterior to LV (+y)
    pair = Pairs(["p"], [sitk.GetArrayFromImage(image).astype(np.float32)], [sitk.GetArrayFromImage(labels)])

    def draws(flips: bool) -> list[dict]:
        np.random.seed(0)  # as the runner seeds it
        data = MixedPairs(pair, None, 0.0, True, flips)
        return [data[0] for _ in range(200)]

    def side(lab: np.ndarray, a: int, b: int, axis: int) -> float:  # centroid of label a minus label b along axis
        return float(np.nonzero(lab == a)[axis].mean() - np.nonzero(lab == b)[axis].mean())

    assert side(pair.labels[0], 2, 4, 2) > 5 and side(pair.labels[0], 1, 2, 1) > 5  # the source's chirality
    on, off = draws(True), draws(False)
    mirrored = {"x": 0, "y": 0}
    for a, b in zip(on, off):
        y_on, y_off = a["labels"].numpy(), b["labels"].numpy()
        assert side(y_off, 2, 4, 2) > 0 and side(y_off, 1, 2, 1) > 0  # flips off: never mirrored
        dims = [d for d, (p, q, axis) in ((-1, (2, 4, 2)), (-2, (1, 2, 1))) if side(y_on, p, q, axis) < 0]
        mirrored["x"] += -1 in dims
        mirrored["y"] += -2 in dims
        # the same draw otherwise (crop, boost): the flips-on item is the flips-off one mirrored on those axes
        assert torch.equal(a["labels"], b["labels"].flip(dims) if dims else b["labels"])
        assert torch.equal(a["image"], b["image"].flip(dims) if dims else b["image"])
    assert 20 <= mirrored["x"] <= 60 and 20 <= mirrored["y"] <= 60, mirrored  # p 0.2 each of 200: ~40
    assert not CTSegData().flips and CTSegData(flips=True).flips  # the default: no mirrors (left/right labels)


def test_pairs_are_resampled_in_physical_space_onto_the_model_grid(tmp_path):
    image32, labels32, _ = make_ct_phantom(5, size=32)  # 5 mm: the model's grid when centred on the image
    image64, labels64, _ = make_ct_phantom(5, size=64)  # the same anatomy at 2.5 mm
    data = CTSegData(size=32, spacing_mm=5.0, centre="image")
    hu, lab = load_pair(*write_pair(tmp_path / "fine", "a", image64, labels64), data, "real")
    native = sitk.GetArrayFromImage(labels32)
    assert hu.shape == lab.shape == (32, 32, 32)
    for k, name in CT_LABELS.items():
        assert dice(lab == k, native == k) > 0.7, name
    assert np.mean([dice(lab == k, native == k) for k in CT_LABELS]) > 0.85
    lv = native == 2
    assert abs(hu[lv].mean() - sitk.GetArrayFromImage(image32)[lv].mean()) < 40  # HU kept (blood pool)
    # a grid at 5 mm is taken voxel for voxel
    hu5, lab5 = load_pair(*write_pair(tmp_path / "same", "a", image32, labels32), data, "real")
    assert np.array_equal(lab5, native) and np.array_equal(hu5, sitk.GetArrayFromImage(image32).astype(np.float32))
    # the same voxels stored mirrored along x (direction -1, origin at the other end): the same result (at 48^3, 3.3 mm,
    # where no target point lies half-way between two voxels: a nearest-neighbour tie would break by storage order)
    image48, labels48, _ = make_ct_phantom(5, size=48)
    hu, lab = load_pair(*write_pair(tmp_path / "48", "a", image48, labels48), data, "real")
    flipped = []
    for img in (image48, labels48):
        out = sitk.GetImageFromArray(sitk.GetArrayFromImage(img)[:, :, ::-1].copy())
        out.SetSpacing(img.GetSpacing())
        out.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
        out.SetOrigin(img.TransformIndexToPhysicalPoint((img.GetSize()[0] - 1, 0, 0)))
        flipped.append(out)
    hu_f, lab_f = load_pair(*write_pair(tmp_path / "mirrored", "a", *flipped), data, "real")
    assert np.mean(lab_f == lab) > 0.999 and np.abs(hu_f - hu).max() < 1.0


def bad(folder: Path, tmp_path: Path, capsys, *args: str) -> str:
    """Run on ``folder`` as the real pairs; the one error line (exit 2), nothing trained."""
    out = tmp_path / "out"
    assert run(out, f"data.real={folder}", SMALL, "train.steps=1", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    assert not (out / "ssl" / "checkpoints").exists() and not (out / "finetune" / "checkpoints").exists()
    return err[-1]


def test_bad_inputs_are_refused_before_training_naming_the_file(folders, tmp_path, capsys):
    real, synthetic = folders
    syn = f"data.synthetic={synthetic}"
    assert "no such folder" in bad(tmp_path / "missing", tmp_path, capsys, syn)
    (tmp_path / "empty").mkdir()
    assert f"data.real {tmp_path / 'empty'}: no image/label pairs" in bad(tmp_path / "empty", tmp_path, capsys, syn)
    assert "data.synthetic: not given" in bad(real, tmp_path, capsys)
    assert "data.synthetic=DIR" in bad(real, tmp_path, capsys, "--data", str(real))

    image, labels, _ = make_ct_phantom(7, size=32)
    arr = sitk.GetArrayFromImage(labels)
    cases = {"alone": None, "nine": arr.copy(), "shifted": arr, "nan": arr}
    cases["nine"][0, 0, 0] = 9
    for name, lab in cases.items():
        folder = tmp_path / name
        img = sitk.Cast(image, sitk.sitkFloat32)
        if name == "nan":
            values = sitk.GetArrayFromImage(img)
            values[3, 3, 3] = np.nan
            img = sitk.GetImageFromArray(values)
            img.CopyInformation(image)
        write_pair(folder, "p", img, labels)
        if lab is None:
            (folder / "p_labels.nii.gz").unlink()
            continue
        out = sitk.GetImageFromArray(lab)
        out.CopyInformation(labels)
        if name == "shifted":
            out.SetOrigin(tuple(o + 2.0 for o in labels.GetOrigin()))
        sitk.WriteImage(out, str(folder / "p_labels.nii.gz"))
    assert "p_image.nii.gz has no labels file" in bad(tmp_path / "alone", tmp_path, capsys, syn)
    said = bad(tmp_path / "nine", tmp_path, capsys, syn)
    assert f"{tmp_path / 'nine' / 'p_labels.nii.gz'}: unknown label values [9]" in said and "8 LAA" in said
    said = bad(tmp_path / "shifted", tmp_path, capsys, syn)
    assert f"{tmp_path / 'shifted' / 'p_labels.nii.gz'}: not on the grid of p_image.nii.gz" in said
    said = bad(tmp_path / "nan", tmp_path, capsys, syn)
    assert f"{tmp_path / 'nan' / 'p_image.nii.gz'} holds 1 NaN" in said

    other = tmp_path / "mr_convention"
    shutil.copytree(synthetic, other)
    info = json.loads((other / "labels.json").read_text())
    (other / "labels.json").write_text(json.dumps({**info, "labels": {"1": "LV", "2": "MYO", "3": "RV"}}))
    said = bad(real, tmp_path, capsys, f"data.synthetic={other}")
    assert f"{other / 'labels.json'}: its label convention" in said

    # fine-tuning alone needs the ssl stage's model, or says how to skip SSL
    said = bad(real, tmp_path, capsys, syn, "--stage", "finetune")
    assert "ssl/model.safetensors: not found" in said and "finetune:model.encoder_from=null" in said
    said = bad(real, tmp_path, capsys, syn, "data.synthetic_fraction=1")
    assert "data.synthetic_fraction: 1" in said


def test_ctseg_is_a_shipped_recipe_documented_with_a_command_that_loads(tmp_path):
    from test_config_nested import documented_commands

    assert "ctseg" in available()
    documented = [items for workflow, items in documented_commands() if workflow == "ctseg"]
    assert any(any(o.startswith("data.real=") for o in items) for items in documented), documented
    stages = stage_configs("ctseg", tmp_path, documented[0])
    assert [s.name for s in stages] == ["ssl", "finetune"]
    assert stages[1].config["model"]["encoder_from"] == str(tmp_path / "ssl" / "model.safetensors")
    assert FinetuneTask.architecture == "ctseg_unet"
    with pytest.raises(InputError, match="model.features"):
        FinetuneTask().build_model({"features": [4, 8]})


REAL_CT = Path("/work/shared/data/totalseg-ct")


@pytest.mark.skipif(not (REAL_CT / "heart.nii.gz").is_file(), reason="shared real CT not available")
def test_a_real_ct_keeps_its_heart_volume_and_a_mask_on_another_grid_is_refused(tmp_path):
    ct, heart = REAL_CT / "ct_cropped.nii.gz", REAL_CT / "heart.nii.gz"  # 1.5 mm; the mask on a larger grid
    with pytest.raises(InputError, match=f"{heart}: not on the grid of ct_cropped.nii.gz"):
        load_pair(ct, heart, CTSegData(), "real")
    image = sitk.ReadImage(str(ct))
    mask = sitk.Resample(sitk.ReadImage(str(heart)), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    sitk.WriteImage(mask, str(tmp_path / "heart_labels.nii.gz"))
    hu, lab = load_pair(ct, tmp_path / "heart_labels.nii.gz", CTSegData(), "real")  # 32^3 at 5 mm around the heart
    native = sitk.GetArrayFromImage(mask) > 0
    assert abs((lab > 0).sum() * 0.125 - native.sum() * 1.5**3 / 1000) < 0.02 * native.sum() * 1.5**3 / 1000  # ml
    assert abs(hu[lab > 0].mean() - sitk.GetArrayFromImage(image)[native].mean()) < 30  # measured 405 -> 389 HU
