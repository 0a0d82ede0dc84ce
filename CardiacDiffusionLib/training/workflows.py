"""Named training recipes: ``cardiac-diffusion train dmcvr --data DIR --out DIR``.

A recipe is a YAML file in ``training/presets/<name>.yaml``: either one runner config, or
``stages:`` (a list of configs, each with a ``name``) trained in order, each into ``OUT/<name>``.
A stage refers to an earlier stage's exported model as ``{stage:<name>}`` (e.g. in
``train.init_from``). Overrides ``key=value`` apply to every stage; ``<stage>:key=value`` to one.
``--data`` sets ``data.root`` of every stage.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .config import did_you_mean, parse_overrides, read_config_file

PRESETS = Path(__file__).with_name("presets")


@dataclass
class Stage:
    name: str
    config: dict


def available() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def load_recipe(name: str) -> list[Stage]:
    """The stages of recipe ``name`` (a shipped name or a YAML path)."""
    path = Path(name) if name.endswith((".yaml", ".yml", ".json")) else PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"train {name}: no such workflow{did_you_mean(name, available())}; known: "
                         f"{', '.join(available()) or 'none'}")  # fmt: skip
    data = read_config_file(path)
    stages = data.get("stages") or [dict(data, name="main")]
    if any(not isinstance(s, dict) or not s.get("name") for s in stages):
        raise InputError(f"train {name}: every entry of stages: needs a name")
    names = [s["name"] for s in stages]
    for stage in names:  # each names its folder under --out
        if not isinstance(stage, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", stage):
            raise InputError(f"train {name}: stage name {stage!r}: use letters, digits, '.', '_' and '-' (it names "
                             "the stage's folder under --out)")  # fmt: skip
        if names.count(stage) > 1:
            raise InputError(f"train {name}: {names.count(stage)} stages are named {stage!r}; give each stage its own "
                             "name (it names the stage's folder under --out)")  # fmt: skip
    return [Stage(s["name"], {k: v for k, v in s.items() if k != "name"}) for s in stages]


def _deep_update(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _substitute(value: Any, out_dir: Path, earlier: list[str], where: str, key: str = "") -> Any:
    """``{stage:NAME}`` -> ``OUT/NAME/model.safetensors``; NAME must be a stage trained before this one."""
    if isinstance(value, dict):
        return {k: _substitute(v, out_dir, earlier, where, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("{stage:") and value.endswith("}"):
        name = value[len("{stage:") : -1]
        if name not in earlier:
            raise InputError(f"{where}: config {key}: {value} is not an earlier stage; earlier stages: "
                             f"{', '.join(earlier) or 'none (this is the first)'}")  # fmt: skip
        return str(out_dir / name / "model.safetensors")
    return value


def stage_configs(name: str, out_dir: str | Path, overrides: list[str] = (), data: str | None = None) -> list[Stage]:
    """Each stage's full config (before defaults) with overrides, ``--data`` and stage references applied."""
    stages = load_recipe(name)
    names = {s.name for s in stages}
    common, per_stage = [], {n: [] for n in names}
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head not in names:
                raise InputError(f"override {item!r}: no stage {head!r}{did_you_mean(head, names)}; stages are "
                                 f"{', '.join(sorted(names))}")  # fmt: skip
            per_stage[head].append(rest)
        else:
            common.append(item)
    result = []
    for stage in stages:
        config = _deep_update(stage.config, parse_overrides(common + per_stage[stage.name]))
        if data and isinstance(config.get("data") or {}, dict):  # another kind is refused by the config check
            config["data"] = {**(config.get("data") or {}), "root": str(data)}
        where = f"train {name} stage {stage.name}"
        result.append(Stage(stage.name, _substitute(config, Path(out_dir), [s.name for s in result], where)))
    return result
