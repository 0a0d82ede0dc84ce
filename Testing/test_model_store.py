"""Model store: safetensors round trip, refusal of tampered, pickled, truncated and mismatched files, registries."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from CardiacDiffusionLib.cli import models as models_cli
from CardiacDiffusionLib.errors import InputError
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
    add_model("toy-a", "dmcvr", path)
    assert load_model("toy-a").entry["sha256"] == sha
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight: still a valid safetensors file
    path.write_bytes(bytes(data))
    for name in ("toy-a", path):  # by name and by the registered file's path
        with pytest.raises(InputError, match="toy-a: sha256 mismatch .* re-download/re-train it, do not use it"):
            load_model(name)
    with pytest.raises(InputError, match="sha256 mismatch"):
        cli("verify", "toy-a")


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
    with pytest.warns(UserWarning), pytest.raises(InputError, match="not valid JSON"):  # the user's file kept
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
