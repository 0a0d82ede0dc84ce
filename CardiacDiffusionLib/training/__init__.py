"""Training: one runner for every workflow; a workflow supplies a small :class:`Task`.

The runner and tasks (torch) load on first use, so ``cardiac-diffusion --help`` does not import torch.
"""

from .config import load_config, parse_overrides

_LAZY = {"TrainResult": "runner", "train": "runner", "Task": "task", "get_task": "task", "register_task": "task"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Task", "TrainResult", "get_task", "load_config", "parse_overrides", "register_task", "train"]
