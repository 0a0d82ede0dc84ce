"""Model store: safetensors round trip, refusal of tampered, pickled, truncated and mismatched files, registries."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from CardiacDiffusionLib.cli import models as models_cli
from CardiacDiffusionLib.errors import InputError, QualityWarning
from CardiacDiffusionLib.models import store
from CardiacDiffusionLib.models.store import add_model, list_models, load_model, save_model, sha256_file, verify_model
from CardiacDiffusionLib.training.toy import ToyMLP

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"features": 4, "hidden": 8, "dropout": 0.0}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A temporary user home and an empty shipped registry (the real one is only read, checked below)."""
    monkeypatch.setenv("CARDIAC_DIFFUSION_HOME", str(tmp_path / "home"))
    shipped = tmp_path / "shipped" / "models.json"
    shipped.parent.mkdir()
    shipped.write_text('{"models": []}')
    monkeypatch.setattr(store, "shipped_registry_path", lambda: shipped)
    return tmp_path


@pytest.fixture
def toy_file(tmp_path):
    torch.manual_seed(0)
    module = ToyMLP(**CONFIG)
    path = tmp_path / "toy.safetensors"
    meta = {"training_command": "cardiac-diffusion train x"}
    sha = save_model(module, path, CONFIG, architecture="toy_mlp", meta=meta)
    return module, path, sha


@pytest.fixture(autouse=True)
def never_unpickle(monkeypatch):
    """Nothing in the store may call torch.load (pickle)."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called by the model store")

    monkeypatch.setattr(torch, "load", refuse)


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *argv])
    return args.func(args)


def test_round_trip_rebuilds_the_same_module(toy_file):
    module, path, sha = toy_file
    assert sha == sha256_file(path) and len(sha) == 64
    loaded = load_model(path)
    assert loaded.architecture == "toy_mlp" and loaded.config == CONFIG and loaded.entry is None
    assert loaded.meta["training_command"] == "cardiac-diffusion train x"
    assert not loaded.module.training
    for key, value in module.state_dict().items():
        assert torch.equal(value, loaded.module.state_dict()[key]), key
    x = torch.randn(3, 4)
    assert torch.equal(module.eval()(x), loaded.module(x))


def test_dmcvr_architecture_round_trip(tmp_path):
    """The built-in DMCVR builder rebuilds a small DMCVR model from the stored config."""
    from CardiacDiffusionLib.dmcvr.model import DMCVRModel

    config = {"z_dim": 16, "semantic_channels": [8, 8, 16, 16], "morph_features": [8, 8, 8, 8, 16, 8],
              "unet_channels": [8, 16], "unet_attention_levels": [False, False], "norm_num_groups": 4,
              "num_head_channels": 8, "morph_channels": 4}  # fmt: skip
    model = DMCVRModel(config)
    save_model(model, tmp_path / "dmcvr.safetensors", config, architecture="dmcvr")
    loaded = load_model(tmp_path / "dmcvr.safetensors")
    assert isinstance(loaded.module, DMCVRModel) and loaded.module.config["z_dim"] == 16
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in loaded.module.state_dict().items())


def test_tampered_file_refused_by_hash(home, toy_file):
    _, path, sha = toy_file
    entry = add_model("toy-a", "dmcvr", path)
    stored = home / "home" / "models" / "toy-a.safetensors"
    assert entry["file"] == "models/toy-a.safetensors" and sha256_file(stored) == sha
    assert load_model("toy-a").entry["sha256"] == sha and load_model("toy-a").checked == "registry sha256 and content sha256"
    data = bytearray(stored.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight: still a valid safetensors file
    stored.write_bytes(bytes(data))
    for name in ("toy-a", stored):  # by name and by the registered file's path
        with pytest.raises(InputError, match="toy-a: sha256 mismatch .* re-download/re-train it, do not use it .*"
                                             "models add --name toy-a .* --force"):  # fmt: skip
            load_model(name)
    with pytest.raises(InputError, match="sha256 mismatch"):
        cli("verify", "toy-a")
    # the original is untouched, and checked as the registered file's bytes and by its own hash
    assert load_model(path).checked == "registry sha256 of toy-a and content sha256"


def test_pickle_file_refused_unread(tmp_path, toy_file):
    module, _, _ = toy_file
    path = tmp_path / "weights.pt"
    torch.save(module.state_dict(), path)  # the real torch.save zip (pickle inside)
    with pytest.raises(InputError, match="pickle .* never loaded"):
        load_model(path)
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)  # a bare pickle stream under a safetensors name
    with pytest.raises(InputError, match="pickle"):
        load_model(raw)


def test_truncated_and_garbage_files_refused(tmp_path, toy_file):
    _, path, _ = toy_file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_model(cut)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a model at all" * 10)
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_model(garbage)
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_architecture_mismatch_refused(tmp_path):
    # weights of a hidden=16 net labelled with a hidden=8 config
    wrong = tmp_path / "wrong.safetensors"
    state = {k: v.contiguous() for k, v in ToyMLP(4, 16).state_dict().items()}
    meta = {"format": store.MODEL_FORMAT, "architecture": "toy_mlp", "config": json.dumps(CONFIG), "meta": "{}"}
    save_file(state, str(wrong), metadata=meta)
    with pytest.raises(InputError, match=r"architecture mismatch.*3 shape \(net.0.bias \(16,\) vs \(8,\)"):
        load_model(wrong)
    # a missing tensor
    del state["net.3.bias"]
    save_file(state, str(wrong), metadata=meta)
    with pytest.raises(InputError, match="architecture mismatch.*1 missing \\(net.3.bias\\)"):
        load_model(wrong)
    # plain safetensors without our metadata, and an unknown architecture
    save_file(state, str(wrong))
    with pytest.raises(InputError, match="no architecture/config"):
        load_model(wrong)
    save_file(state, str(wrong), metadata={**meta, "architecture": "nope"})
    with pytest.raises(InputError, match="architecture 'nope': unknown"):
        load_model(wrong)
    # saving refuses a config that does not rebuild the module
    with pytest.raises(InputError, match="config does not rebuild"):
        save_model(ToyMLP(4, 16), tmp_path / "x.safetensors", CONFIG, architecture="toy_mlp")


def test_models_add_list_verify_round_trip(home, toy_file, capsys):
    _, path, sha = toy_file
    shipped_before = store.shipped_registry_path().read_bytes()
    card = home / "card.yaml"
    card.write_text("version: '1.2'\ninput: {spacing_mm: [1.25, 1.25], size: [128, 128]}\nlabels: {1: LV}\n")
    assert cli("add", "--name", "mine", "--workflow", "dmcvr", "--file", str(path), "--card", str(card)) == 0
    registry = home / "home" / "models.json"
    entries = json.loads(registry.read_text())["models"]
    assert [e["name"] for e in entries] == ["mine"] and entries[0]["sha256"] == sha
    assert entries[0]["version"] == "1.2" and entries[0]["input"]["size"] == [128, 128]
    assert entries[0]["training"]["command"] == "cardiac-diffusion train x"
    assert store.shipped_registry_path().read_bytes() == shipped_before  # shipped registry untouched
    capsys.readouterr()
    assert cli("list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["source"], m["architecture"]) for m in listed] == [("mine", "user", "toy_mlp")]
    assert cli("list") == 0 and "mine" in capsys.readouterr().out
    assert cli("verify", "mine") == 0 and "sha256 ok" in capsys.readouterr().out
    assert verify_model("mine")["parameters"] == 4 * 8 + 8 + 8 + 1
    with pytest.raises(InputError, match="already registered"):
        add_model("mine", "dmcvr", path)
    add_model("mine", "sadir", path, force=True)
    assert [(m["name"], m["workflow"]) for m in list_models()] == [("mine", "sadir")]
    with pytest.raises(InputError, match="--workflow"):
        add_model("other", "nope", path)
    bad_card = home / "bad.yaml"
    bad_card.write_text("versoin: 2\n")
    with pytest.raises(InputError, match="unknown keys"):
        add_model("other", "dmcvr", path, card=bad_card)
    with pytest.raises(InputError, match="not registered"):
        load_model("nobody")


def test_shipped_name_is_reserved(home, toy_file):
    _, path, sha = toy_file
    entry = {"name": "dmcvr-acdc", "workflow": "dmcvr", "version": "1", "file": str(path), "sha256": sha,
             "architecture": "toy_mlp"}  # fmt: skip
    store.shipped_registry_path().write_text(json.dumps({"models": [entry]}))
    with pytest.raises(InputError, match="shipped model has this name"):
        add_model("dmcvr-acdc", "dmcvr", path)
    assert load_model("dmcvr-acdc").entry["name"] == "dmcvr-acdc"
    assert [m["source"] for m in list_models()] == ["shipped"]


def test_registry_entries_checked(home):
    store.shipped_registry_path().write_text('{"models": [{"name": "x", "workflow": "dmcvr"}]}')
    with pytest.raises(InputError, match="lacks"):
        list_models()
    store.shipped_registry_path().write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        list_models()


def test_shipped_registry_and_schema_are_valid():
    shipped = REPO / "Resources" / "models.json"
    entries = store.read_registry(shipped)  # every entry passes check_entry
    schema = json.loads((REPO / "Resources" / "models.schema.json").read_text())
    entry_schema = schema["properties"]["models"]["items"]
    assert set(entry_schema["required"]) == set(store.REQUIRED)
    assert entry_schema["properties"]["workflow"]["enum"] == list(store.WORKFLOWS)
    for entry in entries:
        assert set(entry) <= set(entry_schema["properties"])


def test_safetensors_whose_header_length_starts_with_0x80_loads(tmp_path):
    """The header length's first byte may be 0x80 (a pickle's first byte); such a file is still safetensors."""
    module = ToyMLP()
    for pad in range(300):  # the description's length moves the header length through every low byte
        path = tmp_path / "m.safetensors"
        save_model(module, path, {"features": 8, "hidden": 32}, "toy_mlp", meta={"description": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.skip("no header length with low byte 0x80 reached")
    assert isinstance(load_model(path).module, ToyMLP)


def test_a_model_is_registered_for_the_workflow_it_serves(home):
    """The audit registered an LDM as a dmcvr model: refused only at use, deep inside. Now at `models add`."""
    tos_file = REPO / "Resources" / "models" / "tos_regressor.safetensors"
    with pytest.raises(InputError, match="a tos_net model serves the lma workflow, not dmcvr; register it with --workflow lma"):
        add_model("tos-as-dmcvr", "dmcvr", tos_file)
    assert add_model("tos-mine", "lma", tos_file)["architecture"] == "tos_net"


def test_a_broken_user_registry_does_not_block_the_shipped_models(home, toy_file):
    """Audit: a corrupt ~/.cardiac-diffusion/models.json stopped commands that only use shipped models."""
    _, path, sha = toy_file
    entry = {"name": "shipped-toy", "workflow": "dmcvr", "version": "1", "file": str(path), "sha256": sha,
             "architecture": "toy_mlp"}  # fmt: skip
    store.shipped_registry_path().write_text(json.dumps({"models": [entry]}))
    store.user_registry_path().parent.mkdir(parents=True, exist_ok=True)
    store.user_registry_path().write_text("{not json")
    with pytest.warns(UserWarning, match="not valid JSON.*shipped models only"):
        assert load_model("shipped-toy").entry["name"] == "shipped-toy"
    with pytest.raises(InputError, match="not valid JSON"):  # the user's file kept
        add_model("mine", "dmcvr", path)
    assert store.user_registry_path().read_text() == "{not json"


def test_a_wheel_carries_the_shipped_models(tmp_path):
    """``pip install .`` on a GPU server or in plain Python: the wheel holds every model of the shipped registry
    (as CardiacDiffusionResources/, where the Slicer extension installs them too) and the recipes, and the
    installed Lib loads a shipped model outside the checkout. Before, the wheel had no models at all."""
    import shutil
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy, so that the build leaves the checkout as it is
    shutil.copytree(repo, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                               "bench", "runs", "demo-output", "Testing", "docs"))  # fmt: skip
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    registry = json.loads((repo / "Resources" / "models.json").read_text())
    wanted = {f"CardiacDiffusionResources/{m['file']}" for m in registry["models"]} | {
        "CardiacDiffusionResources/models.json", "CardiacDiffusionLib/training/presets/dmcvr.yaml"}  # fmt: skip
    assert wanted <= names, sorted(wanted - names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")  # what pip install puts in site-packages
    check = ("from CardiacDiffusionLib.models.store import load_model, shipped_registry_path; "
             "print(shipped_registry_path()); print(load_model('tos-regressor').architecture)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(tmp_path / "site" / "CardiacDiffusionResources" / "models.json"), "tos_net"]


# -- review of every odd input (files made by the real save_model / training runner, tampered copies in tmp_path)
def _header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return length, json.loads(data[8 : 8 + length])


def _flip(src: Path, dst: Path, offset: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


def test_an_unregistered_file_is_checked_by_the_hash_it_carries(tmp_path, toy_file):
    """A model file given by path (reconstruct --model, sample --model, train.init_from) used to load unchecked:
    a flipped weight bit gave silently wrong results. save_model now records a content sha256 in the header."""
    _, path, _ = toy_file
    length, header = _header(path)
    assert len(header["__metadata__"]["content_sha256"]) == 64
    data_flip = _flip(path, tmp_path / "data.safetensors", path.stat().st_size - 3)
    text_at = path.read_bytes().index(b"cardiac-diffusion train x")  # a byte of the training command in the header
    header_flip = _flip(path, tmp_path / "head.safetensors", text_at + 3)
    assert json.loads(header_flip.read_bytes()[8 : 8 + length])  # still valid JSON, still a valid safetensors file
    for bad in (data_flip, header_flip):
        with pytest.raises(InputError, match=f"model file {bad} is damaged: its header or weights changed since it "
                                             "was saved .* re-download/re-train it, do not use it"):  # fmt: skip
            load_model(bad)
    assert load_model(path).checked == "content sha256"
    assert sha256_file(path) == save_model(toy_file[0], tmp_path / "again.safetensors", CONFIG, "toy_mlp",
                                           meta={"training_command": "cardiac-diffusion train x"})  # same weights, same file


def test_a_file_checked_by_no_hash_is_said(tmp_path, home, capsys):
    """A file with no content hash in it that no registry knows (here a shipped file, with the shipped registry
    emptied): loads, with a QualityWarning, and `models verify` says its bytes are not checked."""
    copy = tmp_path / "tos_copy.safetensors"
    copy.write_bytes((REPO / "Resources" / "models" / "tos_regressor.safetensors").read_bytes())
    with pytest.warns(QualityWarning, match="not registered and saved without a content hash"):
        assert load_model(copy).checked == ""
    assert cli("verify", str(copy)) == 0
    assert "its bytes are NOT checked, tos_net rebuilt strictly" in capsys.readouterr().out


def test_a_copy_of_a_shipped_file_is_checked_by_its_registry_entry(tmp_path, monkeypatch, capsys):
    """A byte-for-byte copy of a shipped model given by path is that model: its sha256 is the registry's, so it
    loads without a warning and its results name it; one changed byte makes it a damaged copy, refused."""
    monkeypatch.setenv("CARDIAC_DIFFUSION_HOME", str(tmp_path / "home"))
    shipped = next(e for e in list_models() if e["name"] == "tos-regressor")
    copy = tmp_path / "mine.safetensors"
    copy.write_bytes(Path(shipped["path"]).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error", QualityWarning)
        loaded = load_model(copy)
    assert loaded.checked == "registry sha256 of tos-regressor"
    recorded = store.model_provenance(loaded)
    assert recorded["name"] == "tos-regressor" and recorded["file"] == str(copy)
    assert recorded["sha256"] == shipped["sha256"] == sha256_file(copy)
    assert store.model_provenance(copy) == recorded
    assert cli("verify", str(copy)) == 0
    assert "registry sha256 of tos-regressor ok" in capsys.readouterr().out
    changed = _flip(copy, tmp_path / "changed.safetensors", len(copy.read_bytes()) - 1)  # the last weight byte
    with pytest.raises(InputError, match="has the header of the shipped model tos-regressor but not its bytes"):
        load_model(changed)  # a damaged copy (test_cli_polish.py); it loaded with the "not registered" warning
    assert store.model_provenance(changed)["name"] is None


@pytest.mark.parametrize("case", ["huge_length", "length_past_end", "empty", "short", "truncated", "shapes", "text",
                                  "legacy_pickle", "module_pickle", "zip_pickle"])  # fmt: skip
def test_every_odd_file_is_one_clear_error(tmp_path, toy_file, case, capsys):
    module, path, _ = toy_file
    data = path.read_bytes()
    length, header = _header(path)
    bad = tmp_path / f"{case}.safetensors"
    if case == "huge_length":
        bad.write_bytes((2**62).to_bytes(8, "little") + data[8:])
    elif case == "length_past_end":
        bad.write_bytes((len(data)).to_bytes(8, "little") + data[8:])
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "short":
        bad.write_bytes(data[:5])
    elif case == "truncated":
        bad.write_bytes(data[:-10])
    elif case == "shapes":  # a header claiming twice the shapes the data holds
        for key, value in header.items():
            if key != "__metadata__":
                value["shape"] = [2 * n for n in value["shape"]]
        text = json.dumps(header).encode()
        bad.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])
    elif case == "text":
        bad.write_bytes(b"weights of my model\n" * 20)
    elif case == "legacy_pickle":
        torch.save(module.state_dict(), bad, _use_new_zipfile_serialization=False)
    elif case == "module_pickle":  # a whole module pickled, as a .ckpt
        torch.save(module, bad)
    else:
        torch.save(module.state_dict(), bad)
    expected = "pickle .* never loaded" if "pickle" in case else f"{bad} is corrupt or truncated"
    with pytest.raises(InputError, match=expected):
        load_model(bad)
    from CardiacDiffusionLib.cli.main import main

    assert main(["models", "verify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model file {bad} ") and err.count("\n") == 1, err
    if case in ("huge_length", "length_past_end"):
        assert "its header length field says" in err


def test_a_model_trained_by_train_is_added_and_used_by_name(home, tmp_path, monkeypatch, capsys):
    """train toy -> models add (relative path) -> the run folder deleted, the working directory changed ->
    train.init_from=<name> starts from exactly those weights; the entry keeps steps and command."""
    import shutil

    from CardiacDiffusionLib.cli.main import main
    from CardiacDiffusionLib.training.runner import train

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = {"task": "toy", "model": {"features": 4, "hidden": 8}, "data": {"size": 16, "features": 4},
           "train": {"steps": 6, "batch_size": 8, "checkpoint_every": 6, "ema_decay": 0}, "device": "cpu"}  # fmt: skip
    result = train(None, cfg, "run", progress="none", command="cardiac-diffusion train toy --out run")
    model = Path("run") / "model.safetensors"
    assert result.model_path.resolve() == model.resolve()
    trained = load_model(model)
    assert trained.meta["steps"] == 6 and trained.architecture == "toy_mlp" and trained.config == cfg["model"]
    assert main(["models", "add", "--name", "toy-trained", "--workflow", "lma", "--file", str(model)]) == 0
    entry = list_models()[0]
    assert entry["training"] == {"command": "cardiac-diffusion train toy --out run", "steps": 6}
    assert entry["copied_from"] == str(work / "run" / "model.safetensors")
    shutil.rmtree("run")
    monkeypatch.chdir(tmp_path)
    loaded = load_model("toy-trained")
    assert loaded.checked == "registry sha256 and content sha256"
    for key, value in trained.module.state_dict().items():
        assert torch.equal(value, loaded.module.state_dict()[key]), key
    start = dict(cfg, train=dict(cfg["train"], steps=1, init_from="toy-trained"), optim={"lr": 0.0})
    train(None, start, "from_name", progress="none")  # one step at lr 0: the exported model is init_from's weights
    again = load_model(Path("from_name") / "model.safetensors").module.state_dict()
    assert all(torch.equal(again[k], v) for k, v in trained.module.state_dict().items())
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"user store: {home / 'home' / 'models.json'}")
    assert str(home / "home" / "models" / "toy-trained.safetensors") in out


def test_real_architectures_reach_their_workflows_by_name(home, tmp_path):
    """A small DMCVR and a small LDM, registered, load by name through reconstruct's and sample's loaders; a model
    of another workflow is refused by each loader (dmcvr, ldm, sadir, tos) with its name."""
    from CardiacDiffusionLib.activation.regressor import predict_tos
    from CardiacDiffusionLib.dmcvr.model import DMCVRModel
    from CardiacDiffusionLib.dmcvr.reconstruction import load_dmcvr
    from CardiacDiffusionLib.ldm.diffusion import LatentDiffusion
    from CardiacDiffusionLib.ldm.generate import load_ldm
    from CardiacDiffusionLib.sadir.reconstruct import _load as load_sadir

    torch.manual_seed(0)
    dmcvr_config = {"z_dim": 16, "semantic_channels": [8, 8, 16, 16], "morph_features": [8, 8, 8, 8, 16, 8],
                    "unet_channels": [8, 16], "unet_attention_levels": [False, False], "norm_num_groups": 4,
                    "num_head_channels": 8, "morph_channels": 4}  # fmt: skip
    save_model(DMCVRModel(dmcvr_config), tmp_path / "d.safetensors", dmcvr_config, "dmcvr",
               meta={"input": {"size": [32, 32], "spacing_mm": [4.0, 4.0]}})  # fmt: skip
    ldm = LatentDiffusion({"vae": {"channels": [8, 16], "norm_num_groups": 4}, "image_size": 16, "spacing_mm": 10.0,
                           "unet": {"channels": [16, 16], "attention_levels": [False, True], "num_head_channels": [0, 16],
                                    "norm_num_groups": 8}})  # fmt: skip
    save_model(ldm, tmp_path / "l.safetensors", ldm.config, "ldm")
    add_model("tiny-dmcvr", "dmcvr", tmp_path / "d.safetensors")
    add_model("tiny-ldm", "ldm", tmp_path / "l.safetensors")
    with pytest.raises(InputError, match="a ldm model serves the ldm workflow, not dmcvr"):
        add_model("ldm-as-dmcvr", "dmcvr", tmp_path / "l.safetensors")
    load_dmcvr.cache_clear()
    module, size, spacing = load_dmcvr("tiny-dmcvr")
    assert isinstance(module, DMCVRModel) and (size, spacing) == (32, 4.0)
    assert load_dmcvr("tiny-dmcvr")[0] is module  # kept while the file is unchanged
    save_model(DMCVRModel(dmcvr_config), tmp_path / "d2.safetensors", dmcvr_config, "dmcvr",
               meta={"input": {"size": [48, 48], "spacing_mm": [3.0, 3.0]}})  # fmt: skip
    add_model("tiny-dmcvr", "dmcvr", tmp_path / "d2.safetensors", force=True)  # re-registered in the same process
    assert load_dmcvr("tiny-dmcvr")[1:] == (48, 3.0)
    assert isinstance(load_ldm("tiny-ldm"), LatentDiffusion)
    with pytest.raises(InputError, match="model tiny-ldm: architecture 'ldm' is not a DMCVR model"):
        load_dmcvr("tiny-ldm")
    with pytest.raises(InputError, match="--model tiny-dmcvr: a dmcvr model; sample needs a latent diffusion model"):
        load_ldm("tiny-dmcvr")
    with pytest.raises(InputError, match="SADIR model tiny-ldm: is a ldm model, not a SADIR model"):
        load_sadir("tiny-ldm")
    with pytest.raises(InputError, match="TOS regressor: expected a tos_net model, got DMCVRModel"):
        predict_tos(torch.zeros(1, 18, 30).numpy(), model="tiny-dmcvr")
    load_dmcvr.cache_clear()


def test_names_files_and_the_user_store_folder(home, toy_file, tmp_path, monkeypatch, capsys):
    from CardiacDiffusionLib.cli.main import main

    _, path, sha = toy_file
    for name in ("my model", "a/b", "../up", "x.safetensors", "", ".hidden", "-x"):
        with pytest.raises(InputError, match="--name .*: use letters, digits"):
            add_model(name, "lma", path)
    assert not (home / "home").exists()  # nothing written for a refused name
    with pytest.raises(InputError, match="--file .*nope.safetensors not found"):
        add_model("m", "lma", tmp_path / "nope.safetensors")
    # a registered name wins over a file of that name in the working directory
    add_model("m", "lma", path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").write_bytes(b"not a model")
    assert load_model("m").entry["name"] == "m"
    # two adds of the same name; another version of it replaces the store's copy with --force
    with pytest.raises(InputError, match="--name m: already registered .* use --force"):
        add_model("m", "lma", path)
    other = ToyMLP(**CONFIG)
    v2 = tmp_path / "v2.safetensors"
    sha2 = save_model(other, v2, CONFIG, "toy_mlp", meta={"steps": 99})
    card = tmp_path / "card.yaml"
    card.write_text("version: '2.0'\n")
    add_model("m", "lma", v2, card=card, force=True)
    [entry] = list_models()
    assert (entry["version"], entry["sha256"], entry["training"]["steps"]) == ("2.0", sha2, 99) and sha2 != sha
    assert torch.equal(load_model("m").module.net[0].weight, other.net[0].weight)
    # the store's copy deleted: said, and listed as missing
    (home / "home" / "models" / "m.safetensors").unlink()
    with pytest.raises(InputError, match="model m: file .* not found; register it again with 'cardiac-diffusion models "
                                         "add ... --force'"):  # fmt: skip
        load_model("m")
    capsys.readouterr()
    assert main(["models", "list"]) == 0 and "(MISSING: re-add or remove this entry)" in capsys.readouterr().out
    # an unusable user store folder: one line naming it and what to do; a missing one is created
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("CARDIAC_DIFFUSION_HOME", str(blocker))
    assert main(["models", "add", "--name", "n", "--workflow", "lma", "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: user model store {blocker}: cannot write there (Not a directory); set CARDIAC_DIFFUSION_HOME "
                   "to a folder you can write (default ~/.cardiac-diffusion)\n")  # fmt: skip
    assert blocker.read_text() == "x"
    monkeypatch.setenv("CARDIAC_DIFFUSION_HOME", str(tmp_path / "new" / "deeper"))
    assert add_model("n", "lma", path)["sha256"] == sha
    assert (tmp_path / "new" / "deeper" / "models" / "n.safetensors").is_file()
    monkeypatch.setenv("CARDIAC_DIFFUSION_HOME", "relative_store")  # taken from the working directory
    assert store.user_home() == tmp_path / "relative_store"


def _validate(value, schema: dict, where: str) -> None:
    """The subset of JSON Schema that models.schema.json uses (type, enum, pattern, required, properties)."""
    import re

    types = {"string": str, "number": (int, float), "integer": int, "object": dict, "array": list, "null": type(None)}
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(isinstance(value, types[t]) and not isinstance(value, bool) for t in allowed), (where, value, allowed)
    if "enum" in schema:
        assert value in schema["enum"], where
    if "pattern" in schema:
        assert re.search(schema["pattern"], value), (where, value)
    if isinstance(value, dict):
        assert set(schema.get("required", [])) <= set(value), where
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(props), (where, set(value) - set(props))
        for key, item in value.items():
            if key in props:
                _validate(item, props[key], f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                _validate(item, schema["additionalProperties"], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _validate(item, schema["items"], f"{where}[{i}]")


def test_shipped_and_user_registries_follow_the_schema(home, toy_file):
    """The shipped registry had training.steps as an object where the schema said integer."""
    schema = json.loads((REPO / "Resources" / "models.schema.json").read_text())
    _validate(json.loads((REPO / "Resources" / "models.json").read_text()), schema, "shipped")
    card = home / "card.yaml"
    card.write_text("version: 3\nlabels: {1: LV}\nmetrics: {dice: 0.9}\n")
    add_model("schema-check", "lma", toy_file[1], card=card)
    _validate(json.loads(store.user_registry_path().read_text()), schema, "user")
    with pytest.raises(AssertionError):  # the validator can fail
        _validate({"models": [{"name": "x"}]}, schema, "broken")


def test_the_cli_prints_an_unchecked_model_as_one_warning_line(tmp_path, home, capsys):
    """A QualityWarning the command does not collect itself (here `sample` given an unchecked copy of the shipped
    LDM) is printed ``warning: ...``, not in Python's file:line form."""
    from CardiacDiffusionLib.cli.main import main

    copy = tmp_path / "ldm_copy.safetensors"
    copy.write_bytes((REPO / "Resources" / "models" / "ldm-ct-phantom-32.safetensors").read_bytes())
    assert main(["sample", "--model", str(copy), "--steps", "2", "--out", str(tmp_path / "pairs"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"warning: model {copy}: not registered and saved without a content hash" in err
    assert "QualityWarning" not in err and "warnings.warn" not in err


def test_provenance_records_the_file_that_was_loaded(home, toy_file, tmp_path):
    """Every result says which model made it: name, version, the file's sha256 and the content hash it carries,
    the same from what load_model returned, from its module, and from the name or the path."""
    module, path, sha = toy_file
    card = home / "card.yaml"
    card.write_text("version: '2.1'\n")
    add_model("mine", "dmcvr", path, card=card)
    stored = home / "home" / "models" / "mine.safetensors"
    loaded = load_model("mine")
    recorded = store.model_provenance(loaded)
    assert recorded == {"name": "mine", "version": "2.1", "sha256": sha256_file(stored), "architecture": "toy_mlp",
                        "content_sha256": _header(stored)[1]["__metadata__"]["content_sha256"], "source": "user",
                        "file": str(stored)}  # fmt: skip
    assert recorded["sha256"] == sha and recorded["content_sha256"] != sha
    assert store.model_provenance(loaded.module) == recorded == store.model_provenance("mine")
    assert store.model_provenance(stored) == recorded  # the registered file given by path
    # the file it was added from has the registered bytes: named by that entry; once changed, its own hashes, no name
    assert store.model_provenance(path) == dict(recorded, file=str(path))
    save_model(module, path, CONFIG, architecture="toy_mlp", meta={"training_command": "another"})
    by_path = store.model_provenance(path)
    assert by_path["name"] is None and by_path["source"] == "file" and by_path["sha256"] == sha256_file(path) != sha
    with pytest.warns(QualityWarning):  # no hash at all: still recorded by its sha256
        copy = tmp_path / "tos_copy.safetensors"
        copy.write_bytes((REPO / "Resources" / "models" / "tos_regressor.safetensors").read_bytes())
        unchecked = store.model_provenance(load_model(copy))
    assert unchecked["sha256"] == sha256_file(copy) and unchecked["content_sha256"] is None
    assert store.model_provenance(ToyMLP(**CONFIG))["sha256"] is None  # not from a file: nothing to claim
    with pytest.raises(InputError, match="not registered"):
        store.model_provenance("nobody")


def test_verify_without_a_name_checks_every_model(home, toy_file, tmp_path, capsys):
    """`models verify` alone: every shipped and user model, one line each; a damaged one fails (exit 2) and the
    others are still checked and said."""
    from CardiacDiffusionLib.cli.main import main

    _, path, sha = toy_file
    entry = {"name": "toy-shipped", "workflow": "lma", "version": "1", "file": str(path), "sha256": sha,
             "architecture": "toy_mlp"}  # fmt: skip
    store.shipped_registry_path().write_text(json.dumps({"models": [entry]}))
    for name in ("good", "bad", "after"):
        add_model(name, "lma", path)
    capsys.readouterr()
    assert main(["models", "verify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["toy-shipped (version 1)", "good (version user)",
                                                           "bad (version user)", "after (version user)"]
    assert all(f"sha256 {sha}" in line for line in lines[:4]) and lines[4] == "all 4 models verified"
    _flip(home / "home" / "models" / "bad.safetensors", home / "home" / "models" / "bad.safetensors", -3)
    assert main(["models", "verify"]) == 2
    said = capsys.readouterr()
    lines = said.out.splitlines()
    assert len(lines) == 4 and "registry sha256 and content sha256 ok" in lines[3]
    assert lines[2].startswith("bad (user): FAILED: model bad: sha256 mismatch")
    assert said.err.splitlines() == ["error: models verify: 1 of 4 models failed (bad); re-download, re-train or "
                                     "re-register them (lines above)"]  # fmt: skip
    assert main(["models", "verify", "good"]) == 0 and "good (version user): registry sha256" in capsys.readouterr().out
