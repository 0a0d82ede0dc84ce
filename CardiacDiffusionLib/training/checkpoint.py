"""Resumable training checkpoints as safetensors: tensors in the file, everything else as JSON in its header.

Why not ``torch.save``: nothing in this project unpickles, so one safe format serves both the
released models and the checkpoints, any safetensors tool can open them, and a checkpoint's
``model.*`` tensors load like a released model. The nested state (optimiser, scheduler, scaler,
RNG states, counters) is split into a tensor table and a strict JSON skeleton that keeps int dict keys,
tuples and non-finite floats (tagged ``{"__float__": "inf"}``: strict JSON has none), so ``load_state_dict``
gets back exactly what ``state_dict`` gave.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..utils.durable import replacing
from ..utils.jsonfile import dumps

FORMAT = "cardiac-diffusion-checkpoint/1"
_NAME = re.compile(r"^step_(\d+)\.safetensors$")


def _split(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()  # clone: no shared storage in the file
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": _split(obj.tolist(), tensors, key), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _split(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, _split(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (np.integer, np.floating)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):  # strict JSON has none: tagged, read back as the float
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at {key}")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return np.asarray(_join(obj["__ndarray__"], tensors), dtype=obj["dtype"])
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {k: _join(v, tensors) for k, v in obj["__items__"]}
        return {k: _join(v, tensors) for k, v in obj.items()}
    return obj


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` atomically and durably (temporary file, flushed, then renamed: an interruption or a power loss
    never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, tensors, "s")
    with replacing(path, path.with_name(path.name + ".tmp")) as tmp:  # a failed write (disk full) leaves none
        mode = _umask_mode(tmp)
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "state": dumps(skeleton, f"checkpoint {path}")})
        os.chmod(tmp, mode)  # safetensors writes 0600 through its own temporary file: the umask's, as other outputs
    return path


def _umask_mode(path: Path) -> int:
    """The mode a new file gets under the process umask (``path`` is created, empty, to ask the system)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)


def is_checkpoint(path: str | Path) -> bool:
    """``path`` is a file written by :func:`save_checkpoint` (its header says so; damaged files are not)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - not a file, not safetensors: not a checkpoint
        return False


def load_checkpoint(path: str | Path) -> dict:
    """The state written by :func:`save_checkpoint`, or an InputError for a damaged file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise InputError(f"checkpoint {path}: not a training checkpoint of this project (format "
                             f"{meta.get('format')}); move it out of {path.parent} (or delete it) to resume from the "
                             "checkpoint before it")  # fmt: skip
        return _join(json.loads(meta["state"]), load_file(str(path)))
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - safetensors/JSON errors of a damaged file
        raise InputError(
            f"checkpoint {path}: corrupt or truncated ({type(error).__name__}: {error}); "
            "delete it to resume from the one before"
        ) from None


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.safetensors"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    for _, path in list_checkpoints(directory)[: -max(1, keep)]:
        path.unlink(missing_ok=True)
