"""The run folder (``--out``): whose run it holds, what a resume may change, and writes that fail (disk full).

A folder is trained into only when it is new, empty of run files, or holds this run: a checkpoint whose settings
match (resume), or a ``config.json`` of the same settings from a run stopped before its first checkpoint.
Anything else (another run's config, a model without checkpoints, a file of the same name that is not a run's)
is refused before a byte is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from .checkpoint import latest_checkpoint

#: settings a resumed run may change: how long (the schedule follows), how often it saves or validates, how it
#: loads data, where and in which precision it runs (CPU is fp32), the data's place, and init_from (read at the
#: start only); the others would be half-applied (the checkpoint's optimiser state wins) or change the data order
RESUMABLE = ("train.steps", "train.checkpoint_every", "train.keep_checkpoints", "train.validate_every",
             "train.num_workers", "train.find_unused_parameters", "train.init_from", "train.precision", "device",
             "data.root")  # fmt: skip
#: files the runner writes into ``--out``
RUN_FILES = ("config.json", "train_log.jsonl", "loss.png", "model.safetensors")


def _flat(config: dict, where: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        path = f"{where}.{key}" if where else str(key)
        out.update(_flat(value, path) if isinstance(value, dict) else {path: value})  # {}: no key (said by its keys)
    return out


def changed_settings(saved: dict, cfg: dict) -> list[str]:
    """``key old -> new`` for each setting of ``cfg`` that differs from ``saved`` and may not change on resume."""
    old, new = _flat(json.loads(json.dumps(saved))), _flat(json.loads(json.dumps(cfg)))
    # a train/optim/schedule key on one side only is a default a newer version added, not the user's change
    keys = [k for k in sorted(set(old) | set(new)) if (k in old and k in new) or k.split(".")[0] in ("model", "data")]
    keys.sort(key=lambda k: k != "task")  # another task (another workflow's folder) is said first
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if k not in RESUMABLE and old.get(k) != new.get(k)]


def check_same_settings(saved: dict | None, cfg: dict, out: Path, last: Path) -> None:
    """A resumed run continues the optimiser, schedule and data order of its checkpoint: other settings would
    be silently half-applied (the optimiser's state wins), and config.json would say what was not trained."""
    if not saved:
        return  # a checkpoint from before configs were stored in it
    changed = changed_settings(saved, cfg)
    if changed:
        raise InputError(
            f"--out {out}: its run ({last.name}) was trained with other settings: {'; '.join(changed[:5])}"
            f"{'; ...' if len(changed) > 5 else ''}. Resume with the same settings (only {', '.join(RESUMABLE)} may "
            "change), or start a new --out (train.init_from=<its model.safetensors> to continue from its weights)"
        )


def check_new_run_folder(cfg: dict, out: Path) -> None:
    """``out`` holds no checkpoint: refuse it when it is a file or holds another run's (or someone's) files."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder; give a folder for the run")
    if not out.is_dir():
        return
    found = [name for name in RUN_FILES if (out / name).exists()]
    if "model.safetensors" in found:
        raise InputError(
            f"--out {out}: holds model.safetensors but no checkpoint to resume from (checkpoints/ was removed?); "
            f"a new run would replace it: choose another --out (train.init_from={out / 'model.safetensors'} to "
            "start from its weights) or move the model away"
        )
    if not found:
        return
    if "config.json" not in found:
        raise InputError(f"--out {out}: holds {', '.join(found)} but no config.json: not a run of this trainer; "
                         "choose another (or an empty) --out")  # fmt: skip
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict) or "task" not in saved:
        raise InputError(f"--out {out}: its config.json is not a training run's config; choose another "
                         "(or an empty) --out, it would be replaced")  # fmt: skip
    changed = changed_settings(saved, cfg)
    if changed:  # a run stopped before its first checkpoint: the same one restarts, another is refused
        raise InputError(
            f"--out {out}: holds another run (config.json, no checkpoint yet) with other settings: "
            f"{'; '.join(changed[:5])}{'; ...' if len(changed) > 5 else ''}. Choose another --out, or delete that "
            "folder to start this run there"
        )


def _os_error(error: Exception) -> OSError | None:
    """The OSError behind a failed write (safetensors reports its I/O errors as its own exception)."""
    if isinstance(error, OSError):
        return error
    text = str(error)
    if type(error).__name__ == "SafetensorError" and "I/O error" in text:
        code = next((int(w) for w in text.replace(")", " ").split() if w.isdigit()), 0)
        return OSError(code, text.split("I/O error: ", 1)[-1].split(" (os error")[0])
    return None


@contextlib.contextmanager
def writing(out: Path, what: str) -> Iterator[None]:
    """Turn a failed write into ``--out DIR: cannot write WHAT (No space left on device); ...`` naming the
    newest checkpoint, which is kept (checkpoints are written whole, then renamed)."""
    try:
        yield
    except Exception as error:
        failed = _os_error(error)
        if failed is None:
            raise
        reason = failed.strerror or str(failed)
        hint = "free disk space" if failed.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "make it writable"
        last = latest_checkpoint(out / "checkpoints")
        kept = f"the newest checkpoint, {last}, is kept: run the same command to resume from it" if last else \
            "no checkpoint was written yet"  # fmt: skip
        raise InputError(f"--out {out}: cannot write {what} ({reason}); {hint} or choose another --out; {kept}") \
            from None  # fmt: skip
