"""3D latent diffusion of CT image + label pairs (CardiacDiffusionLib/ldm), at 16^3-32^3, seconds each."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.labels import CT_LABELS
from CardiacDiffusionLib.ldm.cleanup import clean_labels, noise_report
from CardiacDiffusionLib.ldm.data import CTPhantomPairs, augment, hu_to_unit, phantom_pair, unit_to_hu
from CardiacDiffusionLib.ldm.diffusion import LatentDiffusion, diffusion_loss, latent_scale
from CardiacDiffusionLib.ldm.ssl import finetune, masker, pretrain, transfer_encoder, ENCODER
from CardiacDiffusionLib.ldm.vae import JointVAE, vae_losses
from CardiacDiffusionLib.models.store import find_model, load_model, save_model, sha256_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


TINY_VAE = {"channels": [8, 16], "norm_num_groups": 4}
TINY_UNET = {"channels": [16, 16], "attention_levels": [False, True], "num_head_channels": [0, 16], "norm_num_groups": 8}


def tiny_ldm(size: int = 16) -> LatentDiffusion:
    torch.manual_seed(0)
    return LatentDiffusion({"vae": TINY_VAE, "unet": TINY_UNET, "image_size": size, "spacing_mm": 10.0})


def batch(n: int, size: int, first_seed: int = 0):
    data = CTPhantomPairs(n, first_seed, size, augment=False)
    return torch.stack([data[i]["image"] for i in range(n)]), torch.stack([data[i]["labels"] for i in range(n)])


def test_hu_window_round_trip():
    hu = np.array([-1000.0, -200.0, 300.0, 800.0, 1200.0])
    assert np.allclose(hu_to_unit(hu), [-1, -1, 0, 1, 1])
    assert np.allclose(unit_to_hu(hu_to_unit(hu)), [-200, -200, 300, 800, 800])


def test_vae_shapes_and_joint_encoder_equals_one_conv_over_concatenation():
    torch.manual_seed(0)
    vae = JointVAE(TINY_VAE)
    image, labels = batch(2, 16)
    recon, logits, mu, sigma = vae(image, labels)
    assert recon.shape == (2, 1, 16, 16, 16) and logits.shape == (2, 9, 16, 16, 16)
    assert mu.shape == sigma.shape == (2, 3, 8, 8, 8)  # 3 latent channels, factor 2
    joint = vae.ae.encoder.blocks[0]
    x = vae.joint_input(image, labels)
    assert x.shape[1] == 10 and torch.equal(x[:, 1:].argmax(1), labels)  # image + one-hot (with background)
    w = torch.cat([joint.image_conv.weight, joint.label_conv.weight], dim=1)
    assert torch.allclose(joint(x), F.conv3d(x, w, joint.image_conv.bias, padding=1), atol=1e-5)


def test_augmentations_keep_pairs_aligned_and_boost_blood():
    hu, lab = phantom_pair(0, 32)
    np.random.seed(3)
    for _ in range(20):
        a_hu, a_lab = augment(hu, lab, p_crop=0.5)
        assert a_hu.shape == a_lab.shape == (32, 32, 32) and set(np.unique(a_lab)) <= set(range(9))
        blood = (a_lab == 2)  # LV blood pool stays bright where the label says LV
        assert a_hu[blood].mean() > 300
    boosted, same = augment(hu, lab, p_crop=0, p_flip=0, p_boost=1.0)
    assert np.array_equal(same, lab)
    assert np.allclose((boosted - hu)[lab == 2], 50) and np.allclose((boosted - hu)[lab == 5], 0)  # MYO not boosted
    flipped, flab = augment(hu, lab, p_crop=0, p_flip=1.0, p_boost=0)
    assert np.array_equal(flab, lab[:, ::-1, ::-1])


def test_latent_scale_gives_unit_std_and_is_stored():
    model = tiny_ldm()
    image, labels = batch(4, 16)
    torch.manual_seed(1)
    scale = latent_scale(model.vae, [(image, labels)])
    torch.manual_seed(1)
    z = model.vae.ae.sampling(*model.vae.encode(image, labels))
    assert abs(float((z * scale).detach().std()) - 1.0) < 1e-4
    model.latent_scale.fill_(scale)
    assert "latent_scale" in model.state_dict()  # a buffer: it travels in the safetensors file


def test_a_few_training_steps_lower_the_losses():
    torch.manual_seed(0)
    vae = JointVAE(TINY_VAE)
    image, labels = batch(2, 16)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        out = vae_losses(vae, image, labels)
        first = first or {k: float(v.detach()) for k, v in out.items()}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in vae_losses(vae, image, labels).items()}
    assert last["loss"] < 0.7 * first["loss"] and last["l1"] < first["l1"] and last["dice_ce"] < first["dice_ce"]

    model = tiny_ldm()
    opt = torch.optim.Adam(model.unet.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(30):
        loss = diffusion_loss(model, image, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert all(p.grad is None for p in model.vae.parameters())  # the VAE stays frozen


def test_ddim_sampling_calls_the_net_k_times_and_is_seeded():
    model = tiny_ldm()
    calls = []
    model.unet.register_forward_hook(lambda *a: calls.append(1))
    img1, lab1 = model.sample(2, seed=5, steps=7)
    assert len(calls) == 7
    img2, lab2 = model.sample(2, seed=5, steps=7)
    img3, _ = model.sample(2, seed=6, steps=7)
    assert torch.equal(img1, img2) and torch.equal(lab1, lab2) and not torch.equal(img1, img3)
    assert img1.shape == (2, 1, 16, 16, 16) and lab1.shape == (2, 16, 16, 16)
    assert int(lab1.min()) >= 0 and int(lab1.max()) <= 8 and float(img1.abs().max()) <= 1.0


def test_v_prediction_trains_on_the_velocity_and_samples_through_the_same_noise():
    """prediction v: the loss targets MONAI's velocity, and eps() recovers the noise exactly from a perfect v."""
    model = LatentDiffusion({"vae": TINY_VAE, "unet": TINY_UNET, "image_size": 16, "prediction": "v"})
    z0, noise = torch.randn(2, *model.latent_shape), torch.randn(2, *model.latent_shape)
    t = torch.tensor([3, 990])
    z_t = model.scheduler.add_noise(z0, noise, t)
    a = model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * z0  # the definition, written out
    assert torch.allclose(model.scheduler.get_velocity(z0, noise, t), v, atol=1e-6)
    model.unet.forward = lambda x, tt: v  # a perfect velocity net
    assert torch.allclose(model.eps(z_t, t), noise, atol=1e-5)
    with pytest.raises(InputError, match="prediction"):
        LatentDiffusion({"vae": TINY_VAE, "unet": TINY_UNET, "prediction": "x0"})


def test_sample_cli_writes_pairs_with_geometry_and_label_names(tmp_path):
    from CardiacDiffusionLib.cli.sample import run

    path = tmp_path / "ldm.safetensors"
    model = tiny_ldm()
    save_model(model, path, model.config, architecture="ldm")
    args = argparse.Namespace(n=2, seed=3, steps=4, model=str(path), no_cleanup=False, out=str(tmp_path / "out"),
                              device="cpu", progress="text")  # fmt: skip
    assert run(args) == 0
    out = tmp_path / "out"
    for i in range(2):
        image = sitk.ReadImage(str(out / f"sample_{i:03d}_image.nii.gz"))
        labels = sitk.ReadImage(str(out / f"sample_{i:03d}_labels.nii.gz"))
        assert image.GetSize() == labels.GetSize() == (16, 16, 16)
        assert image.GetSpacing() == labels.GetSpacing() == (10.0, 10.0, 10.0)
        assert np.allclose(image.GetOrigin(), (-75.0, -75.0, -75.0)) and labels.GetOrigin() == image.GetOrigin()
        assert labels.GetPixelID() == sitk.sitkUInt8 and image.GetPixelID() == sitk.sitkInt16
        assert set(np.unique(sitk.GetArrayFromImage(labels))) <= set(range(9))
        hu = sitk.GetArrayFromImage(image)
        assert hu.min() >= -200 and hu.max() <= 800  # inside the training window
    info = json.loads((out / "labels.json").read_text())
    assert info["labels"] == {str(k): v for k, v in CT_LABELS.items()} and info["steps"] == 4
    # which model made them: the file's own sha256 and the content hash it carries (an unregistered file: no name)
    assert info["model"]["sha256"] == sha256_file(path) and info["model"]["name"] is None
    assert info["model"]["content_sha256"] == load_model(path).content_sha256 and info["model"]["file"] == str(path)
    assert [s["seed"] for s in info["samples"]] == [3, 4]
    # pair i depends on seed S+i only, not on how many were asked for
    args.n, args.seed, args.out = 1, 4, str(tmp_path / "one")
    run(args)
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "sample_001_image.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "one" / "sample_000_image.nii.gz")))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    args.out = str(out)  # one pair into the folder of two: the second pair of the earlier run is gone
    run(args)
    assert sorted(p.name for p in out.iterdir()) == ["labels.json", "sample_000_image.nii.gz", "sample_000_labels.nii.gz"]
    with pytest.raises(InputError, match="--n 0"):
        run(argparse.Namespace(**{**vars(args), "n": 0}))
    with pytest.raises(InputError, match="not found"):
        run(argparse.Namespace(**{**vars(args), "model": str(tmp_path / "missing.safetensors")}))


def test_pairs_are_sampled_a_chunk_at_a_time_with_the_same_result():
    """iter_pairs samples `chunk` pairs per call (memory bounded whatever n; the audit's `sample --n 200000` ran
    out of memory allocating every pair at once) and gives the pairs of one big batch."""
    from CardiacDiffusionLib.ldm.generate import iter_pairs

    model, calls = tiny_ldm(), []
    sample = model.sample
    model.sample = lambda n, **kw: calls.append(n) or sample(n, **kw)
    pairs = list(iter_pairs(model, 5, seed=2, steps=2, chunk=2))
    assert calls == [2, 2, 1] and [p["seed"] for p in pairs] == [2, 3, 4, 5, 6]
    whole = list(iter_pairs(model, 5, seed=2, steps=2, chunk=5))
    for a, b in zip(pairs, whole):
        np.testing.assert_allclose(a["hu"], b["hu"], atol=0.5)
        assert (a["raw_labels"] == b["raw_labels"]).mean() > 0.999


def test_cleanup_lowers_noisy_fraction_on_a_known_answer():
    _, truth = phantom_pair(0, 32)
    assert noise_report(truth)["noisy_fraction"] == 0.0  # the phantom's true labels are clean
    rng = np.random.default_rng(0)
    noisy = truth.copy()
    flip = rng.uniform(size=truth.shape) < 0.03  # salt: random labels anywhere
    noisy[flip] = rng.integers(0, 9, int(flip.sum()))
    before, cleaned = noise_report(noisy), clean_labels(noisy)
    after = noise_report(cleaned)
    assert before["noisy_fraction"] > 0.03 and after["noisy_fraction"] < 0.1 * before["noisy_fraction"]
    assert after["components_per_label"] == 1.0
    assert (cleaned == truth).mean() > 0.995 > (noisy == truth).mean()


def test_ssl_masking_follows_its_parameters_and_encoder_transfers():
    t = masker(32, prob=1.0, seed=0)
    t.randomize((32, 32, 32))
    assert len(t.hole_coords) == 25
    sides = [s.stop - s.start for c in t.hole_coords for s in c[1:]]
    assert min(sides) >= 4 and max(sides) <= 8  # 8-16 voxels at 64^3, halved at 32^3
    assert masker(64).spatial_size == 8 and masker(64).max_spatial_size == 16 and masker(64).prob == 0.8
    images, labels = batch(2, 32)  # BasicUNet halves 4 times: 32^3 is the smallest useful size
    net, losses = pretrain(images[:1], steps=6, batch=1, lr=5e-3, features=(4, 4, 8, 8, 8, 4))
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    seg = transfer_encoder(net, 9, features=(4, 4, 8, 8, 8, 4))
    for key, value in seg.state_dict().items():
        same = key in net.state_dict() and net.state_dict()[key].shape == value.shape and torch.equal(net.state_dict()[key], value)
        assert same == (key.split(".")[0] in ENCODER) or "num_batches" in key
    losses = finetune(seg, images[:1], labels[:1], steps=6, batch=1, lr=5e-3, flips=False)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])


def test_encoded_pairs_give_the_loss_of_encoding_in_the_step():
    """Latents encoded once (EncodedPairs) and sampled per step give exactly the in-step encoder's loss."""
    from CardiacDiffusionLib.ldm.data import EncodedPairs
    from CardiacDiffusionLib.ldm.diffusion import latent_diffusion_loss

    model = tiny_ldm().eval()
    pairs = CTPhantomPairs(3, 0, 16, augment=False)
    encoded = EncodedPairs(pairs, model.vae, draws=2)
    assert len(encoded) == 6 and torch.equal(encoded[1]["mu"], encoded[4]["mu"])
    image = torch.stack([pairs[i]["image"] for i in range(3)])
    labels = torch.stack([pairs[i]["labels"] for i in range(3)])
    torch.manual_seed(5)
    expected = diffusion_loss(model, image, labels)
    mu, sigma = torch.stack([encoded[i]["mu"] for i in range(3)]), torch.stack([encoded[i]["sigma"] for i in range(3)])
    torch.manual_seed(5)
    got = latent_diffusion_loss(model, model.vae.ae.sampling(mu, sigma) * model.latent_scale)
    assert torch.allclose(got, expected, rtol=1e-5), (got, expected)


def test_ldm_preset_chains_the_frozen_vae(tmp_path):
    from CardiacDiffusionLib.training.workflows import stage_configs

    stages = stage_configs("ldm", tmp_path)
    assert [s.name for s in stages] == ["vae", "diffusion"]
    assert stages[1].config["model"]["vae"] == str(tmp_path / "vae" / "model.safetensors")
    assert stages[0].config["model"]["latent_channels"] == 3


def test_shipped_model_loads_round_trips_a_phantom_and_a_tampered_copy_is_refused(tmp_path):
    entry = find_model("ldm-ct-phantom-32")
    model = load_model(entry["name"]).module
    assert isinstance(model, LatentDiffusion) and float(model.latent_scale) != 1.0
    image, labels = batch(1, 32, first_seed=100_000)
    recon, pred = model.vae.round_trip(image, labels)
    dices = [2 * ((pred == k) & (labels == k)).sum() / ((pred == k).sum() + (labels == k).sum()) for k in range(1, 9)]
    assert float(torch.stack(dices).mean()) > 0.85
    copy = tmp_path / "tampered.safetensors"
    shutil.copy(entry["path"], copy)
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 mismatch"):
        load_model(copy, sha256=entry["sha256"])


def test_shipped_64_model_round_trips_a_held_out_phantom_and_samples_at_64():
    """ldm-ct-phantom-64: VAE x4 (latent 3x16^3); round trip label Dice measured 0.965 over 8 held-out phantoms."""
    model = load_model("ldm-ct-phantom-64").module
    assert model.latent_shape == (3, 16, 16, 16) and model.config["spacing_mm"] == 2.5
    image, labels = batch(1, 64, first_seed=100_000)
    _, pred = model.vae.round_trip(image, labels)
    dices = [2 * ((pred == k) & (labels == k)).sum() / ((pred == k).sum() + (labels == k).sum()) for k in range(1, 9)]
    assert float(torch.stack(dices).mean()) > 0.93
    sampled_image, sampled_labels = model.sample(1, seed=0, steps=4)
    assert sampled_image.shape == (1, 1, 64, 64, 64) and int(sampled_labels.max()) <= 8
    assert len(torch.unique(sampled_labels)) >= 6  # a heart's worth of structures, not one blob


def test_evaluate_ldm_cli_runs_every_arm_on_tiny_settings(tmp_path, capsys):
    from CardiacDiffusionLib.cli.evaluate import run_ldm
    from CardiacDiffusionLib.phantoms.ct import make_ct_phantom

    path = tmp_path / "ldm.safetensors"
    model = LatentDiffusion({"vae": TINY_VAE, "unet": TINY_UNET, "image_size": 32, "spacing_mm": 5.0})
    save_model(model, path, model.config, architecture="ldm")
    args = argparse.Namespace(model=str(path), real=2, generated=2, test=1, ssl_steps=2, finetune_steps=2, ddim_steps=2,
                              seed=0, repeats=2, real_ct=None, out=str(tmp_path / "eval.json"))  # fmt: skip
    assert run_ldm(args) == 0
    both = json.loads((tmp_path / "eval.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert both["repeats"]["seeds"] == [0, 1] and [r["setup"]["seed"] for r in both["runs"]] == [0, 1]
    for arm, summary in both["repeats"]["arms"].items():
        runs = [r["downstream"][arm]["dice"]["mean"]["mean"] for r in both["runs"]]
        assert summary["runs"] == runs and summary["mean"] == pytest.approx(np.mean(runs))
        assert summary["sd"] == pytest.approx(np.std(runs))
    a, b = both["repeats"]["arms"]["a_scratch_real"]["runs"], both["repeats"]["arms"]["b_ssl_gen_then_real"]["runs"]
    assert both["repeats"]["wins"]["a_scratch_real > b_ssl_gen_then_real"] == sum(x > y for x, y in zip(a, b))
    assert both["model"]["sha256"] == sha256_file(path) and both["model"]["architecture"] == "ldm"
    result = both["runs"][0]
    assert set(result["downstream"]) == {"a_scratch_real", "b_ssl_gen_then_real", "c_ssl_gen_then_real_plus_gen"}
    for arm in result["downstream"].values():
        assert all(0.0 <= arm["dice"][name]["mean"] <= 1.0 for name in CT_LABELS.values())
    # real-role volumes are the phantoms' own (truth counts the same label images)
    truth = [make_ct_phantom(seed, size=32)[2]["volumes_ml"] for seed in (0, 1)]
    for name in CT_LABELS.values():
        assert result["volumes_ml"]["real_role"][name]["mean"] == pytest.approx(np.mean([t[name] for t in truth]))
    assert result["label_noise"]["after_cleanup"]["noisy_fraction"] <= result["label_noise"]["before_cleanup"]["noisy_fraction"]
    out = capsys.readouterr().out
    assert "| a_scratch_real |" in out and "of 2 seeds" in out


def test_train_ldm_refuses_a_data_folder(tmp_path, capsys):
    """The ldm recipe makes its own phantoms: `--data DIR` is refused by name (it used to be ignored silently),
    before any run folder is made, in the VAE stage and in the diffusion stage."""
    from CardiacDiffusionLib.cli.main import main
    from CardiacDiffusionLib.ldm.tasks import DiffusionTask
    from CardiacDiffusionLib.training.config import load_config
    from CardiacDiffusionLib.training.runner import train
    from CardiacDiffusionLib.training.workflows import stage_configs

    data = tmp_path / "my_ct_folder"
    data.mkdir()
    assert main(["train", "ldm", "--data", str(data), "--out", str(tmp_path / "run"), "device=cpu", "train.steps=1"]) == 2
    err = capsys.readouterr().err
    assert "error: --data (config data.root): task CardiacDiffusionLib.ldm.tasks:VAETask makes its own training data" in err
    assert "leave --data out" in err and not (tmp_path / "run").exists()
    vae_path = tmp_path / "vae.safetensors"
    vae = JointVAE(TINY_VAE)
    save_model(vae, vae_path, vae.config, architecture="ldm_vae")
    stage = stage_configs("ldm", tmp_path / "run", [f"diffusion:model.vae={vae_path}", "diffusion:model.scale_phantoms=2",
                                                      "diffusion:train.steps=1"], data=str(data))[1]  # fmt: skip
    assert stage.config["data"]["root"] == str(data)
    with pytest.raises(InputError, match=r"--data \(config data.root\): task .*DiffusionTask makes its own"):
        train(DiffusionTask(), load_config(stage.config), tmp_path / "run" / "diffusion", progress="none")
    assert not (tmp_path / "run").exists()
    # without --data the same stage config builds its phantom dataset
    del stage.config["data"]["root"]
    task = DiffusionTask()
    task.build_model(load_config(stage.config)["model"])
    assert len(task.build_dataset({**stage.config["data"], "phantoms": 2})) == 2


def _pairs(n: int, first_seed: int = 0, interrupt_after: int | None = None):
    """Pairs of known content: labels a slab of value 1 + index, image 10 x seed HU."""
    for i in range(n):
        if interrupt_after is not None and i == interrupt_after:
            raise KeyboardInterrupt
        labels = np.zeros((4, 5, 6), np.uint8)
        labels[1:3] = 1 + i
        yield {"seed": first_seed + i, "hu": np.full((4, 5, 6), 10.0 * (first_seed + i)), "labels": labels,
               "noise_before": {}, "noise_after": {}}  # fmt: skip


def _folder(out) -> tuple[list[str], list[int]]:
    """(file names, seeds in labels.json)."""
    info = json.loads((out / "labels.json").read_text())
    return sorted(p.name for p in out.iterdir()), [s["seed"] for s in info["samples"]]


def test_an_interrupted_sample_run_leaves_whole_listed_pairs_only(tmp_path, monkeypatch):
    """Ctrl-C between pairs or in the middle of a pair's writing: the folder holds whole pairs, each in labels.json,
    no temporary file; the earlier run's pairs go once the first new pair is ready, not before."""
    from CardiacDiffusionLib.io import volumes
    from CardiacDiffusionLib.ldm.generate import write_pairs

    out = tmp_path / "out"
    write_pairs(out, _pairs(3), 2.0, {})
    earlier = _folder(out)
    assert earlier == (["labels.json", *[f"sample_00{i}_{k}.nii.gz" for i in range(3) for k in ("image", "labels")]],
                       [0, 1, 2])  # fmt: skip
    with pytest.raises(KeyboardInterrupt):  # stopped while the first pair is sampled: the earlier run stays
        write_pairs(out, _pairs(2, 50, interrupt_after=0), 2.0, {})
    assert _folder(out) == earlier
    with pytest.raises(KeyboardInterrupt):  # stopped while the third pair is sampled
        write_pairs(out, _pairs(5, 100, interrupt_after=2), 2.0, {})
    names, seeds = _folder(out)
    assert seeds == [100, 101] and names == ["labels.json", *[f"sample_00{i}_{k}.nii.gz" for i in range(2)
                                                                for k in ("image", "labels")]]  # fmt: skip
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "sample_001_image.nii.gz")))
    assert (hu == 1010).all()  # the new run's pair, not the earlier one's

    calls, original = [], volumes.write_image

    def interrupted_write(image, path):  # Ctrl-C while the second pair's labels are written
        calls.append(path.name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(image, path)

    monkeypatch.setattr(volumes, "write_image", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        write_pairs(out, _pairs(3, 200), 2.0, {})
    assert calls[3] == ".partial_sample_001_labels.nii.gz"
    assert _folder(out) == (["labels.json", "sample_000_image.nii.gz", "sample_000_labels.nii.gz"], [200])


def _ldm_and_vae_files(folder):
    """(a tiny LDM's file, its VAE stage's file) in ``folder``."""
    model = tiny_ldm()
    save_model(model, folder / "ldm.safetensors", model.config, architecture="ldm")
    save_model(model.vae, folder / "vae.safetensors", model.vae.config, architecture="ldm_vae")
    return folder / "ldm.safetensors", folder / "vae.safetensors"


def test_sample_cli_odd_options_and_models_are_refused_before_the_work(tmp_path):
    from CardiacDiffusionLib.cli.sample import run

    path, vae_path = _ldm_and_vae_files(tmp_path)
    (tmp_path / "a_file").write_text("x")
    good = dict(n=1, seed=0, steps=2, model=str(path), no_cleanup=False, out=str(tmp_path / "out"), device="cpu")
    for change, said in (({"n": -3}, "--n -3: give at least 1"), ({"seed": -1}, "--seed -1: give a seed from 0"),
                         ({"seed": 2**63 - 1}, "--seed"), ({"steps": 0}, "--steps 0"),
                         ({"steps": 1001}, "--steps 1001: at most 1000"),
                         ({"n": 10**12}, r"--n 1000000000000: at most 10000 pairs a run"),
                         ({"out": str(tmp_path / "a_file")}, "is a file"),
                         ({"out": str(tmp_path / "a_file" / "out")}, "lies under the file"),
                         ({"model": str(vae_path)}, "a ldm_vae model; sample needs a latent diffusion model .* VAE stage"),
                         ({"model": "dmcvr-acdc-64"}, "a dmcvr model; sample needs"),
                         ({"model": str(tmp_path / "a_file")}, "corrupt or truncated")):  # fmt: skip
        with pytest.raises(InputError, match=said):
            run(argparse.Namespace(**{**good, **change}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "ldm.safetensors", "vae.safetensors"]


def test_sample_cli_json_progress_and_ctrl_c_in_a_real_process(tmp_path):
    """`sample --progress json` reports DDIM steps as fractions that grow to 1; SIGINT to the running command ends
    it with code 130 and a line saying how many pairs were kept, and leaves only those, whole and listed."""
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / "ldm.safetensors"
    model = tiny_ldm()
    save_model(model, path, model.config, architecture="ldm")
    command = [sys.executable, "-m", "CardiacDiffusionLib.cli.main", "sample", "--model", str(path), "--steps", "3",
               "--device", "cpu", "--progress", "json"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "--n", "3", "--out", str(tmp_path / "three")], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    fractions = [json.loads(line)["progress"] for line in done.stdout.splitlines()]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == 3  # one chunk, 3 steps
    child = subprocess.Popen([*command, "--n", "10000", "--out", str(tmp_path / "many")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        while not child.stderr.readline().startswith("seed 10:"):  # the 11th pair is out of the sampler
            assert child.poll() is None
        child.send_signal(signal.SIGINT)
        err = child.communicate(timeout=60)[1]
    finally:
        child.kill()
    assert child.returncode == 130, err
    kept = int(err.split("cancelled after ")[1].split(" ")[0])
    assert 10 <= kept < 100000 and f"the {kept} finished pairs are in" in err
    names, seeds = _folder(tmp_path / "many")
    assert seeds == list(range(kept)) and len(names) == 1 + 2 * kept and not any(n.startswith(".") for n in names)
    for i in range(kept):
        image = sitk.ReadImage(str(tmp_path / "many" / f"sample_{i:03d}_image.nii.gz"))
        labels = sitk.ReadImage(str(tmp_path / "many" / f"sample_{i:03d}_labels.nii.gz"))
        assert image.GetSize() == labels.GetSize() == (16, 16, 16) and image.GetOrigin() == labels.GetOrigin()


def test_evaluate_ldm_odd_options_are_refused_and_absent_labels_are_null(tmp_path):
    from CardiacDiffusionLib.cli.evaluate import run_ldm
    from CardiacDiffusionLib.ldm.evaluate import format_table, per_label_dice

    path, vae_path = _ldm_and_vae_files(tmp_path)
    good = dict(model=str(path), real=2, generated=2, test=1, ssl_steps=1, finetune_steps=1, ddim_steps=1, seed=0,
                repeats=1, real_ct=None, out=None)  # fmt: skip
    for change, said in (({"real": 1}, "--real 1: give at least 2"), ({"generated": 1}, "--generated 1: give at least 2"),
                         ({"test": 0}, "--test 0"), ({"ddim_steps": 5000}, "--ddim-steps 5000: at most 1000"),
                         ({"seed": -1}, "--seed -1: give a seed from 0"), ({"out": str(tmp_path)}, "is a folder"),
                         ({"model": str(vae_path)}, "a ldm_vae model; evaluate ldm needs a latent diffusion")):  # fmt: skip
        with pytest.raises(InputError, match=said):
            run_ldm(argparse.Namespace(**{**good, **change}))
    ref = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    ref[:, :2] = 1
    pred = ref.clone()
    pred[1, 0] = 0  # volume 1: half of LA missed -> Dice 2/3
    dices = per_label_dice(pred, ref)
    assert dices["LA"] == {"mean": pytest.approx(5 / 6), "sd": pytest.approx(1 / 6)}
    assert dices["LV"] == {"mean": None, "sd": None}  # in no volume: no number, not NaN
    assert dices["mean"] == {"mean": pytest.approx(5 / 6), "sd": None}
    json.dumps(dices, allow_nan=False)
    table = format_table({"downstream": {"a": {"dice": dices}}, "vae_round_trip_test": {"label_dice": dices,
                          "psnr_db": 1.0, "ssim": 0.5}, "label_image_agreement": {"generated": dices},
                          "diversity_ms_ssim": {"generated": 0.1, "real_role": 0.2},
                          "label_noise": {k: {"noisy_fraction": 0.0} for k in ("before_cleanup", "after_cleanup",
                                                                              "real_role_labels")}})  # fmt: skip
    assert "| a | 0.833 | - |" in table
