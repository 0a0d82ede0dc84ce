"""The model store: safetensors weights that rebuild their own module, checked before use, never unpickled.

A model file is safetensors with metadata ``format``, ``architecture`` (a name in the
architecture registry), ``config`` (JSON given to that builder), ``meta`` (JSON: training
command, steps, ...) and ``content_sha256`` (the sha256 of its header and weights, written by
:func:`save_model`, so that a file given by path is checked too). Loading checks, in order: the
sha256 recorded in a registry, that the file is a readable safetensors model (a pickle is refused
unread), the content hash the file carries, and that the config rebuilds a module with exactly the
file's keys and shapes (strict) - each failure an InputError. A file checked by neither hash is
loaded with a :class:`QualityWarning`. :func:`model_provenance` says which model made a result
(name, version, sha256) for the JSON files the workflows write.

Registries: ``Resources/models.json`` (shipped, never edited by code) and the user's store
``$CARDIAC_DIFFUSION_HOME/models.json`` (default ``~/.cardiac-diffusion``), written by
:func:`add_model` (``cardiac-diffusion models add``), which copies each file into the store's ``models/``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import struct
import warnings
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import yaml

from ..errors import InputError, QualityWarning
from ..utils.durable import replace_durably, write_durably
from ..utils.jsonfile import dumps, non_finite

if TYPE_CHECKING:  # torch and safetensors are imported where used: the CLI lists and registers models without them
    import torch
    from torch import nn

MODEL_FORMAT = "cardiac-diffusion-model/1"
WORKFLOWS = ("dmcvr", "sadir", "ldm", "lma")
REQUIRED = ("name", "workflow", "version", "file", "sha256", "architecture")
CARD_KEYS = ("version", "description", "input", "labels", "training", "metrics", "url", "license")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
CONTENT_KEY = "content_sha256"  # metadata: sha256 of the file's header (less this key) and weights
MAX_HEADER = 100_000_000  # bytes; safetensors' own limit

#: architecture name -> "module:builder", imported on first use; builder(config: dict) -> nn.Module
BUILTIN_ARCHITECTURES: dict[str, str] = {
    "dmcvr": "CardiacDiffusionLib.dmcvr.model:DMCVRModel",
    "toy_mlp": "CardiacDiffusionLib.training.toy:build_toy_mlp",
    "tos_net": "CardiacDiffusionLib.activation.regressor:build_tos_net",
    "ldm_vae": "CardiacDiffusionLib.ldm:build_vae",
    "ldm": "CardiacDiffusionLib.ldm:build_ldm",
    "sadir": "CardiacDiffusionLib.sadir.model:build_sadir",
    "sadir_unet3d": "CardiacDiffusionLib.sadir.train:build_unet",
    "ctseg_unet": "CardiacDiffusionLib.ldm.seg_tasks:build_seg_unet",
}
#: the workflow each built-in workflow architecture serves (others, e.g. user architectures, are not checked)
ARCHITECTURE_WORKFLOW = {"dmcvr": "dmcvr", "sadir": "sadir", "sadir_unet3d": "sadir", "ldm": "ldm", "ldm_vae": "ldm",
                         "ctseg_unet": "ldm", "tos_net": "lma"}  # fmt: skip
_ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {}
#: module -> its provenance, for every module :func:`load_model` returned (dropped with the module)
_PROVENANCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
Builders = dict[str, Callable[[dict], "nn.Module"]]


class LoadedModel(NamedTuple):
    module: nn.Module
    architecture: str
    config: dict
    meta: dict
    entry: dict | None  # the registry entry (None for an unregistered file)
    checked: str = ""  # what vouched for the bytes: "registry sha256", "content sha256", both, or "" (nothing)
    path: str = ""  # the file loaded
    sha256: str = ""  # that file's sha256, computed while loading
    content_sha256: str = ""  # the content hash the file carries ("" when none)


# -- architectures
def register_architecture(name: str, builder: Callable[[dict], nn.Module]) -> None:
    """Make ``architecture: name`` rebuild modules with ``builder(config)``."""
    _ARCHITECTURES[name] = builder


def _builder(name: str, builders: Builders | None) -> Callable[[dict], nn.Module]:
    if builders and name in builders:
        return builders[name]
    if name in _ARCHITECTURES:
        return _ARCHITECTURES[name]
    if name in BUILTIN_ARCHITECTURES:
        module, _, attr = BUILTIN_ARCHITECTURES[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    known = sorted({*_ARCHITECTURES, *BUILTIN_ARCHITECTURES, *(builders or {})})
    raise InputError(f"architecture {name!r}: unknown; known architectures are {known}")


def build_architecture(name: str, config: dict, builders: Builders | None = None) -> nn.Module:
    builder = _builder(name, builders)
    try:
        return builder(config)
    except InputError:
        raise
    except (TypeError, ValueError, KeyError) as error:
        raise InputError(f"architecture {name}: its config does not build a module ({error})") from None


def _shape_differences(expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k} {found[k]} vs {expected[k]}" for k in sorted(set(expected) & set(found)) if found[k] != expected[k]]
    out = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            out.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
    return out


def _state_shapes(module: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# -- files
def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(
    module: nn.Module, path: str | Path, config: dict, architecture: str, meta: dict | None = None,
    check: bool = True, builders: Builders | None = None,
) -> str:  # fmt: skip
    """Write ``module``'s weights with the config that rebuilds it; return the file's sha256.

    With ``check`` the config is rebuilt first and must give the same keys and shapes.
    """
    state = module.state_dict()
    if check:
        problems = _shape_differences(_state_shapes(build_architecture(architecture, config, builders)),
                                      {k: tuple(v.shape) for k, v in state.items()})  # fmt: skip
        if problems:
            raise InputError(
                f"save_model {path}: config does not rebuild this {architecture} module: {'; '.join(problems)}"
            )
    tensors, seen = {}, set()
    for key, value in state.items():
        value = value.detach().cpu().contiguous()
        if value.data_ptr() in seen and value.numel():  # tied weights: safetensors refuses shared memory
            value = value.clone()
        seen.add(value.data_ptr())
        tensors[key] = value
    metadata = {"format": MODEL_FORMAT, "architecture": architecture, "config": dumps(config, f"{path} config"),
                "meta": dumps(meta or {}, f"{path} meta")}  # fmt: skip
    from safetensors.torch import save

    blob = save(tensors, metadata=metadata)
    header, start = _parse_header(blob[:8], lambda n: blob[8 : 8 + n], len(blob), str(path))
    weights = memoryview(blob)[start:]  # offsets in the header are relative to here: the header may change
    header["__metadata__"][CONTENT_KEY] = _content_sha256(header, [weights])
    # written sorted (safetensors writes its metadata in hash-map order): the same weights give the same file
    text = dumps(header, str(path), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text = text.ljust(-(-len(text) // 8) * 8)  # the weights 8-byte aligned, as safetensors writes them
    blob = struct.pack("<Q", len(text)) + text + bytes(weights)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, blob)
    return hashlib.sha256(blob).hexdigest()


def _subject(label: str, path: Path | str) -> str:
    """``model NAME: FILE`` for a registered model, ``model file FILE`` for one given by path (named once)."""
    return f"model file {path}" if str(label) == str(path) else f"model {label}: {path}"


def _corrupt(label: str, path: Path | str, why: str) -> InputError:
    return InputError(f"{_subject(label, path)} is corrupt or truncated, not a readable safetensors file ({why}); "
                      "re-download or re-train it")  # fmt: skip


def _parse_header(head: bytes, read: Callable[[int], bytes], size: int, label: str, path: Path | str = "") -> tuple[dict, int]:
    """(the JSON header, offset of the weights) of safetensors bytes; the length field is checked before reading."""
    path = path or label
    if size < 8 or len(head) < 8:
        raise _corrupt(label, path, f"{size} bytes, shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", head[:8])
    if length > MAX_HEADER or 8 + length > size:
        raise _corrupt(label, path, f"its header length field says {length} bytes, the file has {size}")
    try:
        header = json.loads(read(length))
    except (ValueError, UnicodeDecodeError):
        raise _corrupt(label, path, "its JSON header does not parse") from None
    if not isinstance(header, dict):
        raise _corrupt(label, path, "its header is not a JSON object")
    return header, 8 + length


def _content_sha256(header: dict, chunks) -> str:
    """sha256 of the header (keys sorted, without the content key) and the weight bytes."""
    header = dict(header)
    header["__metadata__"] = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != CONTENT_KEY}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _check_content(path: Path, label: str) -> str:
    """Check the content hash a file carries; returns it ("" when it carries none)."""
    with path.open("rb") as f:
        header, start = _parse_header(f.read(8), f.read, path.stat().st_size, label, path)
        expected = (header.get("__metadata__") or {}).get(CONTENT_KEY)
        if not expected:
            return ""
        f.seek(start)
        actual = _content_sha256(header, iter(lambda: f.read(1 << 20), b""))
    if actual != expected:
        raise InputError(
            f"{_subject(label, path)} is damaged: its header or weights changed since it was saved (content sha256 "
            f"{actual[:16]}..., recorded {str(expected)[:16]}...); re-download/re-train it, do not use it"
        )
    return actual


def read_model_header(path: str | Path, label: str | None = None) -> tuple[str, dict, dict, dict[str, tuple]]:
    """(architecture, config, meta, {key: shape}) from a model file's header; the weights are not read."""
    path = Path(path)
    label = label or str(path)
    if not path.is_file():
        raise InputError(f"model {label}: file {path} not found")
    with path.open("rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header ("{"); the length's
    # first byte may be 0x80, so the pickle check applies only to files that are not safetensors
    safetensors = head[8:9] == b"{"
    if not safetensors and (head[:2] == b"PK" or head[:1] == b"\x80"):  # torch.save zip or a raw pickle
        raise InputError(
            f"{_subject(label, path)} is a pickle (torch.save) file; pickles can run code and are never loaded: "
            "where you trust its origin, load it into its module yourself and write it with "
            "models.store.save_model, then use that .safetensors file"
        )
    with path.open("rb") as f:  # the length field and the JSON, before safetensors reads anything
        _parse_header(f.read(8), f.read, path.stat().st_size, label, path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as error:  # noqa: BLE001 - any parse failure of the header
        raise _corrupt(label, path, str(error)) from None
    if metadata.get("format") != MODEL_FORMAT or "architecture" not in metadata:
        raise InputError(
            f"{_subject(label, path)} has no architecture/config in its metadata; save it with models.store.save_model"
        )
    try:
        config, meta = json.loads(metadata.get("config", "{}")), json.loads(metadata.get("meta", "{}"))
    except ValueError:
        raise InputError(f"{_subject(label, path)} has a damaged config in its metadata; re-download it") from None
    return metadata["architecture"], config, meta, shapes


def _registered_copy(sha: str) -> dict | None:
    """The registry entry whose file has these bytes (a copy of a registered model given by path), or None."""
    return next((e for e in list_models() if str(e.get("sha256", "")).lower() == sha.lower()), None)


def _header(path: Path | str) -> dict | None:
    """A safetensors file's JSON header (metadata and tensor layout), None when unreadable."""
    try:
        with Path(path).open("rb") as f:
            return _parse_header(f.read(8), f.read, os.fstat(f.fileno()).st_size, str(path))[0]
    except (OSError, InputError):
        return None


def _refuse_changed_copy(path: Path, label: str) -> None:
    """A file without a content hash whose header (architecture, config, meta and tensor layout) is a registered
    model's but whose sha256 is not (the shipped files predate the content hash): a damaged or changed copy of it."""
    header = _header(path)
    for entry in list_models():
        if header is not None and _header(entry["path"]) == header:
            name, source = entry["name"], entry.get("source", "registered")
            raise InputError(f"{_subject(label, path)} has the header of the {source} model {name} but not its bytes "
                             f"(its sha256 is not the registry's): a damaged or changed copy; use the name {name} "
                             "(the checked file) instead, or copy/re-download it again")  # fmt: skip


def _check_sha256(path: Path, expected: str, label: str, entry: dict | None = None) -> str:
    """The file's sha256, checked against ``expected``."""
    actual = sha256_file(path)
    if actual.lower() != expected.lower():
        again = ""
        if entry and entry.get("source") == "user":
            again = (f" (if you changed it on purpose, register it again: cardiac-diffusion models add --name {label} "
                     "--workflow ... --file FILE --force)")  # fmt: skip
        raise InputError(
            f"model {label}: sha256 mismatch (file {actual[:16]}..., registry {expected[:16]}...): {path} is damaged "
            f"or was changed; re-download/re-train it, do not use it{again}"
        )
    return actual


def load_model(
    name_or_path: str | Path, device: str | torch.device = "cpu", builders: Builders | None = None,
    sha256: str | None = None,
) -> LoadedModel:  # fmt: skip
    """A registered model by name, or a model file, rebuilt and checked, in eval mode on ``device``.

    The sha256 is checked when known (registry entry of the name or of the file, or ``sha256``), and the
    content sha256 the file carries (written by :func:`save_model`); a file with neither loads with a
    QualityWarning.
    """
    entry, path = _locate(name_or_path)
    label = entry["name"] if entry else str(path)
    expected = sha256 or (entry or {}).get("sha256")
    checked, sha = [], ""
    if expected:
        if not path.is_file():
            where = "register it again with 'cardiac-diffusion models add ... --force'" if (entry or {}).get(
                "source") == "user" else "re-download it or fix the registry entry"  # fmt: skip
            raise InputError(f"model {label}: file {path} not found; {where}")
        sha = _check_sha256(path, expected, label, entry)
        checked.append("registry sha256")
    architecture, config, meta, shapes = read_model_header(path, label)
    if not sha:  # a file given by path: a byte-for-byte copy of a registered model is checked by that entry
        sha = sha256_file(path)
        entry = _registered_copy(sha)
        if entry:
            checked.append(f"registry sha256 of {entry['name']}")
    content = _check_content(path, label)
    if content:
        checked.append("content sha256")
    elif not entry:
        _refuse_changed_copy(path, label)
    if entry and entry.get("architecture") not in (None, architecture):
        raise InputError(f"model {label}: registry says architecture {entry['architecture']}, the file {architecture}")
    module = build_architecture(architecture, config, builders)
    problems = _shape_differences(_state_shapes(module), shapes)
    if problems:
        raise InputError(
            f"model {label}: architecture mismatch, the weights do not fit {architecture} with the stored config: "
            f"{'; '.join(problems)}"
        )
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(path)), strict=True)
    except Exception as error:  # noqa: BLE001 - data part damaged although the header parsed
        raise InputError(f"{_subject(label, path)} could not be read ({error}); re-download or re-train it") from None
    if not checked:  # said once the file has passed every other check
        warnings.warn(
            f"model {label}: not registered and saved without a content hash, so nothing checks that its weights "
            "are intact; register it (cardiac-diffusion models add) or re-save it with models.store.save_model",
            QualityWarning, stacklevel=2,
        )  # fmt: skip
    from ..utils.onednn import use_onednn_convs  # batch-1 CPU inference: see utils/onednn.py

    loaded = LoadedModel(use_onednn_convs(module).to(device).eval(), architecture, config, meta, entry,
                         " and ".join(checked), str(path), sha, content)  # fmt: skip
    _PROVENANCE[loaded.module] = model_provenance(loaded)
    return loaded


def model_provenance(model: LoadedModel | nn.Module | str | Path) -> dict:
    """Which model made a result, for the JSON a workflow writes: ``name`` (registry name, None for an
    unregistered file), ``version``, ``sha256`` (of the file), ``content_sha256`` (the hash it carries, None
    when none), ``architecture``, ``source`` (shipped, user or file) and ``file``.

    ``model``: what :func:`load_model` returned, or its module (both: the file as loaded); or a registered
    name or a path (the file as it is now: hashed here, its weights not read). A module that did not come
    from the store has no file: name, version and hashes are None.
    """
    if isinstance(model, LoadedModel):
        entry, path, sha, content = model.entry, model.path, model.sha256, model.content_sha256
        architecture, meta = model.architecture, model.meta
    elif isinstance(model, (str, Path)):
        entry, file = _locate(model)
        label = entry["name"] if entry else str(file)
        architecture, _, meta, _ = read_model_header(file, label)
        with file.open("rb") as f:  # the content hash it carries (read_model_header keeps to the model's keys)
            header, _ = _parse_header(f.read(8), f.read, file.stat().st_size, label, file)
        path, sha, content = str(file), sha256_file(file), (header.get("__metadata__") or {}).get(CONTENT_KEY)
        entry = entry or _registered_copy(sha)
    elif model in _PROVENANCE:
        return dict(_PROVENANCE[model])
    else:
        return {"name": None, "version": None, "sha256": None, "content_sha256": None,
                "architecture": type(model).__name__, "source": "module given in memory", "file": None}  # fmt: skip
    return {"name": entry["name"] if entry else None,
            "version": (entry or {}).get("version") or (meta if isinstance(meta, dict) else {}).get("version"),
            "sha256": sha, "content_sha256": content or None, "architecture": architecture,
            "source": (entry or {}).get("source", "file"), "file": str(path)}  # fmt: skip


# -- registries
def shipped_registry_path() -> Path:
    """``Resources/models.json`` of a checkout, or ``CardiacDiffusionResources/`` beside the Lib in Slicer."""
    root = Path(__file__).resolve().parents[2]
    installed = root / "CardiacDiffusionResources" / "models.json"
    return installed if installed.is_file() else root / "Resources" / "models.json"


def user_home() -> Path:
    """The user's model store: ``$CARDIAC_DIFFUSION_HOME`` (``~`` expanded; a relative value is relative to the
    working directory), else ``~/.cardiac-diffusion`` on every platform."""
    return Path(os.environ.get("CARDIAC_DIFFUSION_HOME") or Path.home() / ".cardiac-diffusion").expanduser().absolute()


def user_registry_path() -> Path:
    return user_home() / "models.json"


def check_entry(entry: Any, where: str) -> dict:
    """A registry entry with the required fields and a known workflow, or an InputError."""
    if not isinstance(entry, dict):
        raise InputError(f"{where}: each model entry must be an object")
    missing = [k for k in REQUIRED if not entry.get(k)]
    if missing:
        raise InputError(f"{where}: model {entry.get('name', '?')!r} lacks {missing}")
    if not isinstance(entry["name"], str) or not re.fullmatch(NAME_PATTERN, entry["name"]):
        raise InputError(f"{where}: model name {entry['name']!r}: use letters, digits, '.', '_' and '-'")
    if entry["workflow"] not in WORKFLOWS:
        raise InputError(f"{where}: model {entry['name']!r} has workflow {entry['workflow']!r}; use one of {WORKFLOWS}")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", str(entry["sha256"])):
        raise InputError(f"{where}: model {entry['name']!r} sha256 is not 64 hex digits")
    return entry


def read_registry(path: str | Path) -> list[dict]:
    """The entries of a models.json (none when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as error:
        raise InputError(f"model registry {path}: not valid JSON ({error}); fix or delete it") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise InputError(f"model registry {path}: expected {{\"models\": [...]}}")
    return [check_entry(e, f"model registry {path}") for e in data["models"]]


def _resolve_file(entry: dict, registry: Path) -> Path:
    """An entry's file: absolute, else next to its registry, else in the user's models folder."""
    file = Path(entry["file"]).expanduser()
    if file.is_absolute():
        return file
    for base in (registry.parent, user_home() / "models"):
        if (base / file).is_file():
            return base / file
    return registry.parent / file


def list_models() -> list[dict]:
    """Shipped then user models, each with ``source`` and the resolved ``path``."""
    out = []
    for source, registry in (("shipped", shipped_registry_path()), ("user", user_registry_path())):
        try:
            entries = read_registry(registry)
        except InputError as error:
            if source == "shipped":
                raise
            # a broken user registry must not block the shipped models (`models add` still refuses to touch it)
            warnings.warn(f"{error}; using the shipped models only", stacklevel=2)
            continue
        out += [{**entry, "source": source, "path": str(_resolve_file(entry, registry))} for entry in entries]
    return out


def find_model(name: str) -> dict:
    models = list_models()
    for entry in models:
        if entry["name"] == name:
            return entry
    known = [e["name"] for e in models]
    raise InputError(
        f"model {name!r}: not registered (known: {known or 'none'}); give a .safetensors path or register it with "
        "'cardiac-diffusion models add'"
    )


def model_path(name_or_path: str | Path) -> Path:
    """The file a registered name or a path stands for (not checked: :func:`load_model` does that)."""
    return _locate(name_or_path)[1]


def _locate(name_or_path: str | Path) -> tuple[dict | None, Path]:
    """(registry entry or None, file): a registered name wins over a same-named file in the working directory;
    a path (a separator or .safetensors) is a file, matched to its registry entry when it is a registered one."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    looks_like_path = isinstance(name_or_path, Path) or path.suffix == ".safetensors" or "/" in text or os.sep in text
    models = list_models()
    if not looks_like_path:
        for entry in models:
            if entry["name"] == text:
                return entry, Path(entry["path"])
        if not path.is_file():
            find_model(text)  # raises: not registered
    resolved = path.resolve()
    for entry in models:  # a registered file keeps its hash check when given by path
        if Path(entry["path"]).resolve() == resolved:
            return entry, path
    return None, path


def _read_card(card: str | Path) -> dict:
    path = Path(card)
    if not path.is_file():
        raise InputError(f"--card {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))  # not the ANSI code page (Windows)
    except (yaml.YAMLError, UnicodeDecodeError):  # not YAML, or not text at all
        data = None
    if not isinstance(data, dict):
        raise InputError(f"--card {path}: expected a YAML/JSON mapping with keys among {CARD_KEYS}")
    unknown = sorted(set(data) - set(CARD_KEYS))
    if unknown:
        raise InputError(f"--card {path}: unknown keys {unknown}; allowed keys are {CARD_KEYS}")
    where = non_finite(data)  # the card goes into the JSON registry, which has no NaN, infinity or dates
    if where:
        raise InputError(f"--card {path}: {where}: JSON has no NaN or infinity; write null (or leave the key out)")
    try:
        dumps(data)
    except TypeError as error:
        raise InputError(f"--card {path}: {error}; write it as text (e.g. a date in quotes)") from None
    return data


def _store_error(home: Path, error: OSError) -> InputError:
    return InputError(
        f"user model store {home}: cannot write there ({error.strerror or error}); set CARDIAC_DIFFUSION_HOME "
        "to a folder you can write (default ~/.cardiac-diffusion)"
    )


def add_model(
    name: str, workflow: str, file: str | Path, card: str | Path | None = None, force: bool = False,
    builders: Builders | None = None,
) -> dict:  # fmt: skip
    """Check a user's model file (readable, hash, rebuilds strictly), copy it into the user store's ``models/``
    and register the copy in the user registry: a run folder deleted, moved or retrained later leaves it intact."""
    if not re.fullmatch(NAME_PATTERN, name or "") or name.endswith(".safetensors"):
        raise InputError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (not ending in .safetensors)")
    if workflow not in WORKFLOWS:
        raise InputError(f"--workflow {workflow!r}: use one of {', '.join(WORKFLOWS)}")
    path = Path(file).expanduser().absolute()
    if any(e["name"] == name for e in read_registry(shipped_registry_path())):
        raise InputError(f"--name {name}: a shipped model has this name; choose another --name")
    home = user_home()
    registry = user_registry_path()
    entries = read_registry(registry)
    if any(e["name"] == name for e in entries) and not force:
        raise InputError(f"--name {name}: already registered in {registry}; use --force to replace it")
    twin = next((e["name"] for e in entries if e["name"] != name and e["name"].lower() == name.lower()), None)
    if twin:  # models/<name>.safetensors: one file on macOS and Windows, whose file names ignore case
        raise InputError(f"--name {name}: model '{twin}' differs only in capitals, and macOS and Windows would store "
                         f"both in one file; choose another --name (or --name {twin} --force to replace it)")
    if not path.is_file():
        raise InputError(f"--file {file}: {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    card_fields = _read_card(card) if card else {}
    sha = sha256_file(path)
    loaded = load_model(path, builders=builders, sha256=sha)  # readable, content hash, rebuilds strictly
    serves = ARCHITECTURE_WORKFLOW.get(loaded.architecture, workflow)
    if serves != workflow:
        raise InputError(f"--file {file}: a {loaded.architecture} model serves the {serves} workflow, not "
                         f"{workflow}; register it with --workflow {serves}")  # fmt: skip
    training = {k: v for k, v in (("command", loaded.meta.get("training_command")), ("steps", loaded.meta.get("steps")))
                if v is not None}  # fmt: skip
    stored = Path("models") / f"{name}.safetensors"
    entry = {"name": name, "workflow": workflow, "version": loaded.meta.get("version") or "user",
             "file": stored.as_posix(), "sha256": sha, "architecture": loaded.architecture, "training": training,
             "copied_from": str(path), "added": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    entry.update(card_fields)
    entries = [e for e in entries if e["name"] != name] + [check_entry(entry, "--card")]
    target = home / stored
    tmp_model, tmp_registry = target.with_name(target.name + ".tmp"), registry.with_name(registry.name + ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, tmp_model)
        if sha256_file(tmp_model) != sha:
            raise InputError(f"--file {file}: changed while it was copied into {target}; add it again")
        tmp_registry.write_text(dumps({"models": entries}, str(registry), indent=2) + "\n")
        replace_durably(tmp_model, target)
        replace_durably(tmp_registry, registry)
    except OSError as error:
        raise _store_error(home, error) from None
    finally:
        for tmp in (tmp_model, tmp_registry):
            if tmp.is_file():
                tmp.unlink()
    return entry


def verify_model(name_or_path: str | Path, builders: Builders | None = None) -> dict:
    """Load a model on the CPU with every check; a short summary when it passes."""
    with warnings.catch_warnings():  # an unchecked file is said in the summary ("checked" empty)
        warnings.simplefilter("ignore", QualityWarning)
        loaded = load_model(name_or_path, builders=builders)
    entry = loaded.entry  # a copy of a registered file given by path has that entry's sha256 checked
    return {
        "name": entry["name"] if entry else None,
        "file": loaded.path,
        "sha256_checked": bool(entry),
        "checked": loaded.checked,
        "architecture": loaded.architecture,
        "parameters": sum(p.numel() for p in loaded.module.parameters()),
        **{k: model_provenance(loaded)[k] for k in ("version", "sha256", "source")},
    }
