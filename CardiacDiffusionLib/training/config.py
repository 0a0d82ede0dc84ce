"""Training configuration: a YAML/JSON file merged over defaults, then ``key.sub=value`` overrides.

Sections: ``task`` (registered name or ``package.module:Factory``), ``model`` and ``data`` (free
form, given to the task: non-finite numbers are refused, and the keys the task's ``model_signature`` /
``data_signature`` name are typed by it, nested dicts of defaults key by key), ``optim``, ``schedule``, ``train``
(checked against :data:`DEFAULTS`: a misspelt key is an error, not a silent default) and ``device``.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError

DEFAULTS: dict[str, Any] = {
    "task": None,
    "model": {},
    "data": {},
    "optim": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": 0.0},
    "schedule": {"name": "constant", "warmup_steps": 0, "min_factor": 0.0},  # constant | cosine | linear
    "train": {
        "steps": 1000,
        "batch_size": 8,
        "seed": 0,
        "ema_decay": 0.9999,  # 0 disables EMA; the exported model holds the EMA weights when on
        "precision": "auto",  # auto (bf16 on CUDA if supported, else fp16) | fp32 | bf16 | fp16; fp32 off GPU
        "checkpoint_every": 500,
        "keep_checkpoints": 2,
        "validate_every": 0,
        "num_workers": 0,
        "find_unused_parameters": False,  # DDP only
        "init_from": None,  # model name or .safetensors to start from (fine-tuning, DMCVR's second stage)
    },
    "device": "auto",
}
FREE_SECTIONS = ("model", "data")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def did_you_mean(word: str, options, prefix: str = "") -> str:
    """``" (did you mean train.steps?)"`` for the option nearest to a misspelt ``word``, else ``""``."""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""


def parse_value(text: str) -> Any:
    """``1e-4`` -> 0.0001, ``true`` -> True, ``[1, 2]`` -> list, anything else the string (JSON, then YAML);
    a recipe's stage reference ``{stage:NAME}`` stays text."""
    if re.fullmatch(r"\{stage:[^{}]*\}", text.strip()):
        return text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.steps=10", "optim.lr=1e-3"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise InputError(f"override {item!r}: expected key.sub=value, e.g. train.steps=1000")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {part} is set to a value and to sub-keys")
        node[leaf] = parse_value(value)
    return out


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Numbers written as strings (YAML reads ``1e-4`` as a string) become numbers."""
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer():
        return int(value)  # train.steps=1e3 on the command line (JSON reads a float)
    if isinstance(default, bool) or default is None or not isinstance(value, str):
        return value
    if isinstance(default, (int, float)):
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"config {where}: {value!r} is not a number; expected e.g. {where}={default}") from None
        return int(number) if isinstance(default, int) and number.is_integer() else number
    return value


def merge(base: dict, update: dict, where: str = "", strict: bool = True) -> dict:
    """Deep copy of ``base`` updated by ``update``; with ``strict`` unknown keys are an InputError."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}.{key}" if where else str(key)
        if strict and key not in base:
            raise InputError(f"config {path}: unknown key{did_you_mean(str(key), base, where)}; known keys are {sorted(base)}")
        free = not where and key in FREE_SECTIONS
        if strict and isinstance(base.get(key), dict) and not isinstance(value, dict):
            if value is None:  # an empty section in YAML (``model:``)
                continue
            raise InputError(f"config {path}: {value!r}; expected a mapping of keys (e.g. {path}.<key>=<value>)")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, path, strict=strict and not free)
        else:
            out[key] = _coerce(value, base.get(key), path) if strict else copy.deepcopy(value)
    return out


def read_config_file(path: str | Path) -> dict:
    """A YAML or JSON mapping, or an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))  # YAML is a superset of JSON; -sig: Notepad's BOM
    except yaml.YAMLError as error:
        raise InputError(f"--config {path}: not valid YAML/JSON ({str(error).splitlines()[0]})") from None
    except UnicodeDecodeError as error:
        raise InputError(f"--config {path}: not a text file ({error}); give the config as YAML or JSON text "
                         "(UTF-8)") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: expected a mapping of sections (task, model, data, optim, train)")
    return data


def load_config(path: str | Path | dict | None = None, overrides: list[str] | dict | None = None) -> dict:
    """Defaults <- config file (or dict) <- overrides, checked."""
    data = read_config_file(path) if isinstance(path, (str, Path)) else (path or {})
    config = merge(DEFAULTS, data)
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    config = merge(config, extra)
    check_config(config)
    return config


def check_config(config: dict) -> None:
    if not config.get("task"):
        raise InputError("config: no task; set task: <name> (e.g. task: toy) or task=<name> on the command line")
    o, s, t = config["optim"], config["schedule"], config["train"]
    if o["name"] not in OPTIMIZERS:
        raise InputError(f"config optim.name: {o['name']!r}; use one of {', '.join(OPTIMIZERS)}")
    if s["name"] not in SCHEDULES:
        raise InputError(f"config schedule.name: {s['name']!r}; use one of {', '.join(SCHEDULES)}")
    if t["precision"] not in PRECISIONS:
        raise InputError(f"config train.precision: {t['precision']!r}; use one of {', '.join(PRECISIONS)}")
    for key in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints"):  # keep 0 would keep 1 anyway
        if not _is_whole(t[key]) or t[key] < 1:
            raise InputError(f"config train.{key}: {t[key]!r}; expected a whole number >= 1")
    if not _is_number(t["ema_decay"]) or not 0 <= t["ema_decay"] < 1:
        raise InputError(f"config train.ema_decay: {t['ema_decay']!r}; expected 0 (off) or a value in (0, 1)")
    _check_numbers(o, t, s)
    _check_train_kinds(t)
    check_task_sections(config)


def _check_numbers(o: dict, t: dict, s: dict) -> None:
    """Values torch would refuse with a traceback mid-start."""
    if not _is_number(o["lr"]) or o["lr"] < 0:
        raise InputError(f"config optim.lr: {o['lr']!r}; expected a learning rate >= 0, e.g. 1e-4")
    betas = o["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
        raise InputError(f"config optim.betas: {betas!r}; expected two numbers in [0, 1), e.g. [0.9, 0.999]")
    for key, value in (("optim.weight_decay", o["weight_decay"]), ("optim.grad_clip", o["grad_clip"]),
                       ("schedule.min_factor", s["min_factor"])):  # fmt: skip
        if not _is_number(value) or value < 0:
            raise InputError(f"config {key}: {value!r}; expected a number >= 0")
    counts = {"schedule.warmup_steps": s["warmup_steps"], **{f"train.{k}": t[k] for k in
              ("num_workers", "validate_every")}}  # fmt: skip
    for key, value in counts.items():
        if not _is_whole(value) or value < 0:
            raise InputError(f"config {key}: {value!r}; expected a whole number >= 0")


def _check_train_kinds(t: dict) -> None:
    """``train`` values of other kinds than numbers."""
    if not _is_whole(t["seed"]):
        raise InputError(f"config train.seed: {t['seed']!r}; expected a whole number, e.g. 0")
    if not isinstance(t["find_unused_parameters"], bool):
        raise InputError(f"config train.find_unused_parameters: {t['find_unused_parameters']!r}; expected true or false")
    if t["init_from"] is not None and (not isinstance(t["init_from"], str) or not t["init_from"].strip()):
        raise InputError(f"config train.init_from: {t['init_from']!r}; expected a model name or a .safetensors path")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_task_sections(config: dict) -> None:
    """``model``/``data``: typed in place by the task's signatures where they are reachable (``"1e-3"`` for a float
    becomes 0.001), then no non-finite number anywhere (the task would build with it, or crash deep in torch)."""
    from .task import section_signature  # imports torch: only when a config is checked for training

    for section in ("model", "data"):
        values = config[section]
        _type_keys(values, section_signature(config["task"], section), section)
        for key, value in values.items():
            _finite(value, f"{section}.{key}")


def _type_keys(values: dict, signature, where: str, closed: bool = False) -> None:
    """Type ``values`` in place by ``signature``. In a dict signature a key whose default is a non-empty dict (LDM's
    ``model.unet``) is typed by that dict the same way, recursively, and its keys are the only ones there (``closed``:
    the model reads no other, so a typo would be dropped silently: ``config model.unet.chanels: unknown key (did you
    mean model.unet.channels?)``)."""
    keys = _typed_keys(signature)
    for key in values if closed else ():
        if key not in keys:
            raise InputError(f"config {where}.{key}: unknown key{did_you_mean(str(key), keys, where)}; known keys are "
                             f"{sorted(keys)}")  # fmt: skip
    for key, (expected, default) in keys.items():
        if key in values:
            values[key] = _typed(values[key], expected, default, f"{where}.{key}")
            nested = isinstance(signature, Mapping) and isinstance(default, Mapping) and default
            if nested and isinstance(values[key], dict):
                _type_keys(values[key], default, f"{where}.{key}", closed=True)


def _default_type(default: Any) -> Any:
    """The type a dict signature's default stands for: ``list[int]`` for ``[16, 32]`` (a non-empty list of one
    kind of number, bool or text; ints and floats together: floats), else the default's own type, None for None."""
    if default is None:
        return None
    if isinstance(default, (list, tuple)) and default:
        kinds = {type(v) for v in default}
        kind = float if kinds == {int, float} else next(iter(kinds)) if len(kinds) == 1 else None
        if kind in (bool, int, float, str):
            return list[kind] if isinstance(default, list) else tuple[kind, ...]
    return type(default)


def _typed_keys(signature) -> dict[str, tuple[Any, Any]]:
    """``{key: (expected type or None, default)}`` of a callable's keyword parameters (annotations, else the
    defaults' types) or of a dict of defaults (:func:`_default_type`); ``{}`` for None."""
    if signature is None:
        return {}
    if isinstance(signature, Mapping):
        return {k: (_default_type(v), v) for k, v in signature.items()}
    try:
        params = inspect.signature(signature).parameters.values()
        hints = typing.get_type_hints(signature.__init__ if isinstance(signature, type) else signature)
    except (TypeError, ValueError, NameError):
        return {}
    out = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is p.empty else p.default
        out[p.name] = (hints.get(p.name, None if default is None else type(default)), default)
    return out


def _typed(value: Any, expected: Any, default: Any, where: str) -> Any:
    """``value`` as ``expected`` wants it (numbers read from text, whole floats as ints), or an InputError."""
    ok, typed = _as(expected, value)
    if ok:
        return typed
    example = f", e.g. {where}={json.dumps(default)}" if default is not None else ""
    raise InputError(f"config {where}: {value!r}; expected {_describe(expected)}{example}")


def _as(expected: Any, value: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is None or expected is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        return next(((True, v) for ok, v in (_as(a, value) for a in args) if ok), (False, value))
    if origin is typing.Literal:
        return value in args, value
    if expected is type(None):
        return value is None, value
    if expected is bool:
        return isinstance(value, bool), value
    if expected in (int, float):
        number = _number(value)
        if number is None or (expected is int and not (math.isfinite(number) and float(number).is_integer())):
            return False, value
        return True, (int(number) if expected is int else float(number))
    if expected is str:
        return isinstance(value, str), value
    if expected in (Path, os.PathLike):
        return isinstance(value, (str, os.PathLike)), value
    base = origin or expected
    if isinstance(base, type) and issubclass(base, Mapping):
        return isinstance(value, Mapping), value
    if isinstance(base, type) and issubclass(base, Sequence) and not issubclass(base, str):
        if not isinstance(value, (list, tuple)):
            return False, value
        if base is tuple and args and args[-1] is not Ellipsis:
            each = args if len(args) == len(value) else None
        else:
            each = [args[0]] * len(value) if args else [None] * len(value)
        if each is None:
            return False, value
        typed = [_as(a, v) for a, v in zip(each, value)]
        return all(ok for ok, _ in typed), type(value)(v for _, v in typed)
    return (isinstance(value, base), value) if isinstance(base, type) else (True, value)


def _number(value: Any) -> float | int | None:
    """An int or float, also from text (``"1e-3"``, as YAML 1.1 leaves it); None for anything else (True too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _describe(expected: Any) -> str:
    args = typing.get_args(expected)
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(expected) is typing.Literal:
        return f"one of {', '.join(map(repr, args))}"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", type(None): "null",
             Path: "a path", os.PathLike: "a path"}  # fmt: skip
    if expected in names:
        return names[expected]
    base = typing.get_origin(expected) or expected
    if isinstance(base, type) and issubclass(base, Mapping):
        return "a mapping of keys"
    if isinstance(base, type) and issubclass(base, Sequence):
        return f"a list{f' (each {_describe(args[0])})' if len(args) == 1 or (args and args[-1] is Ellipsis) else ''}"
    return getattr(expected, "__name__", str(expected))


def _finite(value: Any, where: str) -> None:
    """InputError for a NaN or infinity in ``value`` (nested lists and mappings too), also written as text."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _finite(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _finite(item, f"{where}[{i}]")
    elif (number := _number(value)) is not None and not math.isfinite(number):
        raise InputError(f"config {where}: {value!r} is not a finite number; give a finite value")
