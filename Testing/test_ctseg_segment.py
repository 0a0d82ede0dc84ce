"""``cardiac-diffusion segment`` (cli/segment.py): a ``train ctseg`` model applied to a CT on its own grid; the same
resampling as training (ldm/seg_tasks.py), labels back on the input's grid, the model store's checks, refusals."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.cli.segment import covered_region, covered_voxels, load_ctseg, segment, to_input_grid
from CardiacDiffusionLib.labels import CT_LABELS
from CardiacDiffusionLib.ldm.seg_tasks import N_CLASSES, CTSegData, build_seg_unet, label_centre, reference_grid
from CardiacDiffusionLib.metrics import dice
from CardiacDiffusionLib.models.store import save_model, sha256_file
from CardiacDiffusionLib.phantoms.ct import make_ct_phantom
from CardiacDiffusionLib.training.runner import train
from CardiacDiffusionLib.utils.jsonfile import loads_strict

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py
FEATURES = [4, 8, 8, 16, 16, 4]


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([dice(a == k, b == k) for k in CT_LABELS]))


def write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """`train ctseg`'s finetune stage, 60 steps on CT phantoms 0-2 (32^3, 5 mm, labels-centred): ~20 s on one thread."""
    root = tmp_path_factory.mktemp("ctseg_model")
    for seed in (0, 1, 2):
        image, labels, _ = make_ct_phantom(seed, size=32)
        write(image, root / "real" / f"c{seed}_image.nii.gz")
        write(labels, root / "real" / f"c{seed}_labels.nii.gz")
    config = {"task": "CardiacDiffusionLib.ldm.seg_tasks:FinetuneTask", "device": "cpu", "model": {"features": FEATURES},
              "data": {"real": str(root / "real"), "synthetic_fraction": 0, "val_fraction": 0, "augment": False},
              "optim": {"lr": 0.02}, "train": {"steps": 60, "batch_size": 1, "ema_decay": 0, "checkpoint_every": 60}}  # fmt: skip
    train(None, config, root / "fit", progress="none")
    return root / "fit" / "model.safetensors"


def oblique(image: sitk.Image, labels: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """The phantom on another grid: turned 25 deg about z and 10 about x, spacing (2.9, 3.3, 4.1) mm, 60 x 54 x 44."""
    turn = sitk.VersorRigid3DTransform()
    turn.SetRotation((0, 0, 1), math.radians(25))
    tilt = sitk.VersorRigid3DTransform()
    tilt.SetRotation((1, 0, 0), math.radians(10))
    direction = np.array(turn.GetMatrix()).reshape(3, 3) @ np.array(tilt.GetMatrix()).reshape(3, 3)
    size, spacing = np.array([60, 54, 44]), np.array([2.9, 3.3, 4.1])
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    ref = sitk.Image([int(n) for n in size], sitk.sitkInt16)
    ref.SetSpacing(spacing.tolist())
    ref.SetDirection(direction.ravel().tolist())
    ref.SetOrigin((centre - direction @ ((size - 1) / 2 * spacing)).tolist())
    return (sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1000, sitk.sitkInt16),
            sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))  # fmt: skip


def test_labels_come_back_on_the_input_grid_with_strict_json_and_provenance(model, tmp_path, capsys):
    image, truth = oblique(*make_ct_phantom(0, size=64)[:2])  # a training phantom, stored on another grid
    ct = write(image, tmp_path / "in" / "ct.nii.gz")
    before = hashlib.sha256(ct.read_bytes()).hexdigest()
    assert main(["segment", "--model", str(model), "--image", str(ct), "--out", str(tmp_path / "seg"),
                 "--progress", "json", "--device", "cpu"]) == 0  # fmt: skip
    events = [loads_strict(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["progress"] == 1.0 and all(e["event"] == "progress" for e in events)
    assert hashlib.sha256(ct.read_bytes()).hexdigest() == before
    out = sitk.ReadImage(str(tmp_path / "seg" / "labels.nii.gz"))
    assert out.GetSize() == image.GetSize() and out.GetPixelID() == sitk.sitkUInt8
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(out, get)(), getattr(image, get)(), atol=1e-5), get
    labels = sitk.GetArrayFromImage(out)
    assert labels.max() <= 8 and set(np.unique(labels)) > {0, 2, 5}
    info = loads_strict((tmp_path / "seg" / "labels.json").read_text())
    assert info["labels"] == {str(k): v for k, v in CT_LABELS.items()} and info["command"] == "segment"
    assert info["model"]["sha256"] == sha256_file(model) and info["model"]["architecture"] == "ctseg_unet"
    assert info["grid"]["size"] == list(image.GetSize()) and info["model_grid"]["size"] == 32
    assert info["model_grid"]["trained_centre"] == "labels" and 1 <= len(info["centring"]["centres_mm"]) <= 3
    lv = info["volumes_ml"]["LV"]
    assert abs(lv - np.sum(labels == 2) * np.prod(image.GetSpacing()) / 1000) < 1e-2
    # 60 steps learn little (an untrained net: ~0), but it comes back in place: measured mean Dice 0.265 (5 mm: 0.275)
    assert mean_dice(labels, sitk.GetArrayFromImage(truth)) > 0.22
    # a second run replaces the first run's two files
    assert main(["segment", "--model", str(model), "--image", str(ct), "--out", str(tmp_path / "seg"),
                 "--device", "cpu"]) == 0  # fmt: skip


def test_a_training_phantom_on_the_models_grid_is_segmented(model):
    loaded, data, window = load_ctseg(str(model), "cpu")
    assert (data.size, data.spacing_mm, data.centre, window) == (32, 5.0, "labels", (-200.0, 800.0))
    image, truth, _ = make_ct_phantom(1, size=32)
    labels, info = segment(loaded.module, image, data, window, "image")
    assert info["input_voxels_outside_cube"] == 0 and info["centring"]["centres_mm"][0] == list(
        np.round(image.TransformContinuousIndexToPhysicalPoint([15.5] * 3), 3))  # fmt: skip
    assert mean_dice(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth)) > 0.24  # measured 0.294


def test_auto_centring_finds_an_off_centre_heart(model):
    """Training centred the cube on the labels; without labels `auto` re-centres on the net's own labels. A 160 mm
    field of view with the heart 28 mm off its centre (x and y): measured mean Dice 0.180 at the image's centre, 0.263
    auto, 0.264 centred on the true labels (the training rule)."""
    loaded, data, window = load_ctseg(str(model), "cpu")
    image, labels, _ = make_ct_phantom(0, size=96, spacing=2.5)  # 240 mm around the heart
    crop = [sitk.RegionOfInterest(v, [64, 64, 64], [24, 24, 16]) for v in (image, labels)]
    truth = sitk.GetArrayFromImage(crop[1])
    score = {c: mean_dice(sitk.GetArrayFromImage(segment(loaded.module, crop[0], data, window, c)[0]), truth)
             for c in ("image", "auto", tuple(crop[1].TransformContinuousIndexToPhysicalPoint(label_centre(truth))))}  # fmt: skip
    image_centre, auto, oracle = score.values()
    assert auto > image_centre + 0.05 and auto > oracle - 0.03, score


def test_the_resampling_round_trip_keeps_the_labels():
    """Labels resampled onto the model's cube as training does (nearest), given back as one-hot probabilities: on the
    input's grid again. Exact where the input is the cube's grid; on an oblique 3 mm grid the 5 mm cube loses the
    thin structures only (measured mean Dice 0.87, every label > 0.72)."""
    data = CTSegData(size=32, spacing_mm=5.0, centre="labels")
    image, labels, _ = make_ct_phantom(4, size=32)
    ref = reference_grid(image, data, sitk.GetArrayFromImage(labels))
    cube = sitk.GetArrayFromImage(sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor))
    back = to_input_grid(np.eye(N_CLASSES, dtype=np.float32)[cube].transpose(3, 0, 1, 2), ref, image,
                         covered_region(ref, image))  # fmt: skip
    assert np.array_equal(back, sitk.GetArrayFromImage(labels))  # on the cube's own voxels: exact

    image, labels = oblique(*make_ct_phantom(4, size=64)[:2])
    native = sitk.GetArrayFromImage(labels)
    ref = reference_grid(image, data, native)
    cube = sitk.GetArrayFromImage(sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor))
    back = to_input_grid(np.eye(N_CLASSES, dtype=np.float32)[cube].transpose(3, 0, 1, 2), ref, image,
                         covered_region(ref, image))  # fmt: skip
    per_label = [dice(back == k, native == k) for k in CT_LABELS]
    assert np.mean(per_label) > 0.84 and min(per_label) > 0.68, per_label


def refused(capsys, tmp_path: Path, *args: str) -> str:
    out = tmp_path / "refused"
    assert main(["segment", "--device", "cpu", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    assert not (out / "labels.nii.gz").exists() and not (out / "labels.json").exists()
    return err[-1]


def test_wrong_models_and_inputs_are_refused_in_one_line(model, tmp_path, capsys):
    image, _, _ = make_ct_phantom(2, size=32)
    ct = write(image, tmp_path / "ct.nii.gz")
    from CardiacDiffusionLib.training.toy import build_toy_mlp

    toy = tmp_path / "toy.safetensors"
    save_model(build_toy_mlp({}), toy, {}, "toy_mlp")
    said = refused(capsys, tmp_path, "--model", str(toy), "--image", str(ct))
    assert "a toy_mlp model; segment applies a ctseg_unet model" in said and "train ctseg" in said
    ssl = tmp_path / "ssl.safetensors"
    save_model(build_seg_unet({"out_channels": 1, "features": FEATURES}), ssl,
               {"out_channels": 1, "features": FEATURES, "input": {}}, "ctseg_unet")  # fmt: skip
    assert "ssl stage" in refused(capsys, tmp_path, "--model", str(ssl), "--image", str(ct))
    old = tmp_path / "old.safetensors"
    save_model(build_seg_unet({"features": FEATURES}), old, {"out_channels": N_CLASSES, "features": FEATURES}, "ctseg_unet")
    said = refused(capsys, tmp_path, "--model", str(old), "--image", str(ct))
    assert "records no size, spacing_mm, centre, hu_window of the grid" in said and "train it again" in said
    tampered = tmp_path / "tampered.safetensors"
    blob = bytearray(model.read_bytes())
    blob[-5] ^= 0x10
    tampered.write_bytes(bytes(blob))
    assert f"model file {tampered} is damaged" in refused(capsys, tmp_path, "--model", str(tampered), "--image", str(ct))

    values = sitk.GetArrayFromImage(image).astype(np.float32)
    values[4, 5, 6] = np.nan
    nan = sitk.GetImageFromArray(values)
    nan.CopyInformation(image)
    nan_path = write(nan, tmp_path / "nan.nii.gz")
    assert f"{nan_path} holds 1 NaN" in refused(capsys, tmp_path, "--model", str(model), "--image", str(nan_path))
    mask = write(make_ct_phantom(2, size=32)[1], tmp_path / "mask.nii.gz")
    assert "a label map or mask?" in refused(capsys, tmp_path, "--model", str(model), "--image", str(mask))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(ct.read_bytes()[:200])
    assert f"--image: {corrupt} is truncated or corrupt" in refused(capsys, tmp_path, "--model", str(model), "--image",
                                                                 str(corrupt))
    assert "--centre 1,2: give auto, image or a point" in refused(
        capsys, tmp_path, "--model", str(model), "--image", str(ct), "--centre", "1,2")  # fmt: skip
    assert "misses the image" in refused(capsys, tmp_path, "--model", str(model), "--image", str(ct),
                                         "--centre", "-900,0,0")  # fmt: skip


def test_outputs_never_replace_inputs_or_the_users_files(model, tmp_path, capsys):
    folder = tmp_path / "data"
    ct = write(make_ct_phantom(2, size=32)[0], folder / "labels.nii.gz")  # a CT the user named labels.nii.gz
    before = ct.read_bytes()
    assert main(["segment", "--model", str(model), "--image", str(ct), "--out", str(folder), "--device", "cpu"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith("error: --out: writing") and "would overwrite the input" in said and ct.read_bytes() == before
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "labels.json").write_text(json.dumps({"labels": {"1": "LA"}, "samples": []}))  # e.g. a `sample` folder's
    other = write(make_ct_phantom(2, size=32)[0], tmp_path / "ct.nii.gz")
    assert main(["segment", "--model", str(model), "--image", str(other), "--out", str(samples), "--device", "cpu"]) == 2
    assert "holds a labels.json that `segment` did not write" in capsys.readouterr().err
    assert json.loads((samples / "labels.json").read_text())["samples"] == [] and not (samples / "labels.nii.gz").exists()


def test_the_voxels_outside_an_oblique_cube_are_counted_exactly():
    """labels.json's input_voxels_outside_cube: the image's voxels the model's cube does not reach, counted one by one
    (by their centres in the cube's continuous index); a cube turned 45 degrees about z leaves corners of its bounding
    box uncovered, which the count once took for covered."""
    image = sitk.Image([40, 40, 24], sitk.sitkInt16)
    image.SetSpacing((1.0, 1.0, 1.5))
    ref = sitk.Image([20, 20, 20], sitk.sitkUInt8)
    ref.SetSpacing((1.2, 1.2, 1.2))
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    ref.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    centre = image.TransformContinuousIndexToPhysicalPoint([19.5, 19.5, 11.5])
    corner = np.array(ref.GetDirection()).reshape(3, 3) @ np.full(3, -9.5 * 1.2)
    ref.SetOrigin(tuple(np.add(centre, corner)))
    region = covered_region(ref, image)
    z, y, x = np.indices(image.GetSize()[::-1]).reshape(3, -1)
    points = np.stack([x, y, z], 1) * np.array(image.GetSpacing()) + np.array(image.GetOrigin())
    index = (points - np.array(ref.GetOrigin())) @ np.array(ref.GetDirection()).reshape(3, 3) / 1.2
    inside = int(np.all((index >= -0.5) & (index <= 19.5), axis=1).sum())
    box = math.prod(b - a for a, b in region)
    assert covered_voxels(ref, image, region) == inside == 8704  # no voxel centre lies on the cube's faces here
    assert box == 28880  # the bounding box with its margin (the old count of covered voxels): 3.3x as many
