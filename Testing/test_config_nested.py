"""Nested model settings (LDM's ``model.unet.*``) typed by the task's signature like the top-level keys: a typo is
refused with the full dotted key and the nearest valid one, a wrong type by key; every preset and every documented
training command still loads; a valid nested override reaches the model the runner builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.ldm.diffusion import DEFAULT_UNET
from CardiacDiffusionLib.ldm.vae import JointVAE
from CardiacDiffusionLib.models.store import load_model, save_model
from CardiacDiffusionLib.training import load_config
from CardiacDiffusionLib.training.runner import train
from CardiacDiffusionLib.training.task import section_signature
from CardiacDiffusionLib.training.workflows import available, stage_configs

ROOT = Path(__file__).resolve().parents[1]
ACDC = "/work/shared/data/acdc"
DIFFUSION = "CardiacDiffusionLib.ldm.tasks:DiffusionTask"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "Resources" / "models.json"]
COMMAND = re.compile(r"(?:cardiac-diffusion train|-m CardiacDiffusionLib\.training) (\w+)([^\n`\"]*)")
OVERRIDE = re.compile(r"(?:\w+:)?(?:model|data|optim|schedule|train)\.[\w.]+=[^\s'`]+")


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(workflow, overrides)`` of every ``train <workflow>`` command in README.md, docs/**/*.md and
    Resources/models.json (a command ends at a line end, a backtick or `` (``; ``<placeholder>`` values left out)."""
    found = []
    for path in DOCS:
        text = path.read_text().replace("\\\n", " ")
        for match in COMMAND.finditer(text):
            workflow, rest = match.group(1), re.split(r" \(|;| #", match.group(2))[0]
            if workflow in available():
                items = [o.rstrip(".,") for o in OVERRIDE.findall(rest) if "<" not in o]
                found.append((workflow, items))
    return found


def nested_keys(out_dir: Path) -> list[tuple[str, str, dict]]:
    """``(task, section.key, default)`` of every shipped task's dict-valued setting whose signature gives its keys."""
    tasks = {s.config["task"] for w in available() for s in stage_configs(w, out_dir, [], ACDC)}
    out = []
    for task in sorted(tasks):
        for section in ("model", "data"):
            signature = section_signature(task, section)
            if isinstance(signature, dict):
                out += [(task, f"{section}.{k}", v) for k, v in signature.items() if isinstance(v, dict) and v]
    return out


def test_every_preset_and_documented_command_loads_nested_settings_included(tmp_path):
    commands = [(w, []) for w in available()] + documented_commands()
    with_overrides = {w for w, items in commands if items}
    assert {"dmcvr", "sadir", "ldm"} <= with_overrides, commands  # the extraction found the documented overrides
    nested_seen = 0
    for workflow, items in commands:
        for stage in stage_configs(workflow, tmp_path, items, ACDC if workflow == "dmcvr" else None):
            task = stage.config["task"]
            assert section_signature(task, "model") is not None and section_signature(task, "data") is not None, task
            config = load_config(stage.config)
            assert config["model"] == stage.config.get("model", {}), (workflow, items)
            assert config["data"] == stage.config.get("data", {}), (workflow, items)
            if isinstance(config["model"].get("unet"), dict):
                assert set(config["model"]["unet"]) <= set(DEFAULT_UNET)
                nested_seen += 1
    assert nested_seen >= 3  # ldm and ldm64 presets, the documented ldm diffusion commands


@pytest.mark.parametrize("workflow", ["ldm", "ldm64"])
def test_a_nested_override_of_a_preset_keeps_its_other_nested_keys(workflow, tmp_path):
    overrides = ["diffusion:model.unet.num_res_blocks=2.0", "diffusion:model.unet.channels=[16,32,32]"]
    stages = stage_configs(workflow, tmp_path, overrides)
    config = load_config(stages[1].config)
    assert config["model"]["unet"] == {"channels": [16, 32, 32], "attention_levels": [False, False, True],
                                       "num_head_channels": [0, 0, 32], "num_res_blocks": 2, "norm_num_groups": 16}
    assert isinstance(config["model"]["unet"]["num_res_blocks"], int)  # 2.0 on the command line: a whole number


def test_every_shipped_nested_setting_refuses_a_typo_with_the_dotted_key_and_the_nearest_one(tmp_path):
    keys = nested_keys(tmp_path)
    assert [(t, k) for t, k, _ in keys] == [(DIFFUSION, "model.unet")]  # the shipped tasks' only one today
    for task, key, default in keys:
        section, name = key.split(".")
        for sub in default:
            typo = sub[:-1] + sub[-1] * 2  # channels -> channelss
            with pytest.raises(InputError) as caught:
                load_config({"task": task, section: {name: {typo: default[sub]}}})
            assert str(caught.value).startswith(f"config {key}.{typo}: unknown key (did you mean {key}.{sub}?); "
                                                f"known keys are {sorted(default)}"), caught.value


@pytest.mark.parametrize("override, said", [
    ("model.unet.chanels=[8,16]", "config model.unet.chanels: unknown key (did you mean model.unet.channels?)"),
    ("model.unet.num_res_blocks=two", "config model.unet.num_res_blocks: 'two'; expected a whole number, "
                                      "e.g. model.unet.num_res_blocks=1"),
    ("model.unet.num_res_blocks=1.5", "config model.unet.num_res_blocks: 1.5; expected a whole number"),
    ("model.unet.channels=[8,x]", "config model.unet.channels: [8, 'x']; expected a list (each a whole number), "
                                  "e.g. model.unet.channels=[32, 64, 64]"),
    ("model.unet.channels=8", "config model.unet.channels: 8; expected a list (each a whole number)"),
    ("model.unet.attention_levels=[0,0,1]", "config model.unet.attention_levels: [0, 0, 1]; expected a list "
                                            "(each true or false)"),
    ("model.unet.norm_num_groups=true", "config model.unet.norm_num_groups: True; expected a whole number"),
    ("model.unet=3", "config model.unet: 3; expected a mapping of keys"),
])  # fmt: skip
def test_a_nested_wrong_key_or_type_is_refused_by_its_dotted_key(override, said):
    with pytest.raises(InputError, match=re.escape(said)):
        load_config({"task": DIFFUSION}, [override])


def test_nested_non_finite_values_are_still_refused_and_list_defaults_type_their_elements():
    with pytest.raises(InputError, match=re.escape("config model.extra.sizes[1]: inf is not a finite number")):
        load_config({"task": "CardiacDiffusionLib.ldm.tasks:VAETask", "model": {"extra": {"sizes": [8, float("inf")]}}})
    # a list signature default types each element too (top level, e.g. SADIR's baseline UNet)
    said = "config model.channels: [8, 'x']; expected a list (each a whole number)"
    with pytest.raises(InputError, match=re.escape(said)):
        load_config({"task": "CardiacDiffusionLib.sadir.train:UNetTask"}, ["model.channels=[8,x]"])
    typed = load_config({"task": "CardiacDiffusionLib.sadir.train:UNetTask"}, ["model.channels=[8.0,16]"])["model"]
    assert typed == {"channels": [8, 16]} and all(isinstance(c, int) for c in typed["channels"])


def test_the_train_command_says_a_nested_typo_in_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    for override, said in (("diffusion:model.unet.chanels=[8,16]", "config model.unet.chanels: unknown key (did you "
                                                                   "mean model.unet.channels?)"),
                           ("diffusion:model.unet.num_res_blocks=two", "config model.unet.num_res_blocks: 'two'; "
                                                                       "expected a whole number")):  # fmt: skip
        assert main(["train", "ldm", "--out", str(out), "device=cpu", "train.steps=1", override]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: train ldm stage diffusion: {said}") and err.count("\n") == 1, err
        assert not out.exists()  # the VAE stage did not train either: every stage is checked first


def test_a_valid_nested_override_is_the_unet_the_runner_builds_and_exports(tmp_path):
    torch.manual_seed(0)
    vae = JointVAE({"channels": [8, 16], "norm_num_groups": 4})  # 16^3 -> latent 3 x 8^3
    vae_path = tmp_path / "vae.safetensors"
    save_model(vae, vae_path, vae.config, architecture="ldm_vae")
    base = {"task": DIFFUSION, "device": "cpu",
            "model": {"vae": str(vae_path), "scale_phantoms": 2, "image_size": 16, "spacing_mm": 10.0},
            "data": {"phantoms": 2, "size": 16, "augment": False},
            "train": {"steps": 1, "batch_size": 1, "ema_decay": 0, "checkpoint_every": 1}}  # fmt: skip
    config = load_config(base, ["model.unet.channels=[8,16,16]", "model.unet.norm_num_groups=8.0",
                                "model.unet.num_head_channels=[0,0,8]"])  # fmt: skip
    result = train(None, config, tmp_path / "run", progress="none")
    exported = load_model(result.model_path).module
    assert exported.config["unet"] == {"channels": [8, 16, 16], "attention_levels": [False, False, True],
                                       "num_head_channels": [0, 0, 8], "num_res_blocks": 1, "norm_num_groups": 8}
    unet = exported.unet
    assert unet.conv_in.conv.out_channels == 8  # the first level's channels: 8, not DEFAULT_UNET's 32
    assert [block.resnets[0].conv1.conv.out_channels for block in unet.down_blocks] == [8, 16, 16]
    assert unet.down_blocks[0].resnets[0].norm1.num_groups == 8
