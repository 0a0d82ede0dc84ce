"""What a workflow gives the runner: a small :class:`Task` (model, dataset, loss, optional validation).

The runner owns the loop (optimiser, schedule, EMA, precision, devices, checkpoints, progress);
a task only says what to train. Tasks are found by name (:func:`register_task`, or the lazy
table :data:`BUILTIN_TASKS`) or by an import path ``package.module:Factory``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import InputError


class Task:
    """Base class; override :meth:`build_model`, :meth:`build_dataset` and :meth:`loss`."""

    #: model-store architecture name of the trained module (see models.store); None: no export
    architecture: str | None = None
    #: what the ``model`` / ``data`` keys are: a callable taking them as keyword arguments (e.g. the model class:
    #: its annotations, else its defaults' types, type each key) or a dict of their defaults (a dict value: the
    #: nested keys, typed alike and the only ones there; a list: its elements' type); checked by key
    #: before the work (config.check_task_sections). None: the task's own code checks them.
    model_signature: Callable | dict | None = None
    data_signature: Callable | dict | None = None

    def build_model(self, config: dict) -> nn.Module:
        """The module to train, from the ``model`` section."""
        raise NotImplementedError

    def build_dataset(self, config: dict) -> Dataset:
        """The training dataset (map-style: ``len`` and ``[i]``), from the ``data`` section."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """Scalar loss of a batch (already on the device), or a dict with ``loss`` and other terms to log.

        Runs under autocast on GPU. Draw randomness from torch/numpy/python's global generators
        (the runner seeds, saves and restores them), not from private unseeded ones.
        """
        raise NotImplementedError

    def parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        """Parameters to optimise (the others are frozen); all by default."""
        return model.parameters()

    def after_step(self, model: nn.Module, step: int, averaged: nn.Module | None) -> dict[str, float] | None:
        """Called on every process after optimiser step ``step`` (1-based), without gradients.

        For alternating optimisation (SADIR's atlas update): change ``model`` and its EMA copy
        ``averaged`` (None without EMA) in place, deterministically (every DDP process runs it);
        return metrics to log, or None. Nothing by default.
        """
        return None

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Metrics of the model (EMA weights when EMA is on), run without gradients every ``validate_every``."""
        return {}

    def model_config(self, config: dict) -> dict:
        """Config stored with the exported model; must rebuild it through the model store."""
        return config


#: task name -> "module:Factory", imported on first use
BUILTIN_TASKS: dict[str, str] = {
    "toy": "CardiacDiffusionLib.training.toy:ToyTask",
    "dmcvr_seg": "CardiacDiffusionLib.dmcvr.tasks:DMCVRSegTask",
    "dmcvr_diffusion": "CardiacDiffusionLib.dmcvr.tasks:DMCVRDiffusionTask",
}
_TASKS: dict[str, Callable[[], Task]] = {}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make ``task: name`` in a config create ``factory()``."""
    _TASKS[name] = factory


def _import(path: str, what: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as error:
        raise InputError(f"{what} {path!r}: cannot import it ({error})") from None


def section_signature(name: str | Task, section: str) -> Callable | dict | None:
    """The ``model_signature`` / ``data_signature`` of the task ``name`` makes, read from its class without making
    one; None when it has none or cannot be found (:func:`get_task` says why)."""
    factory: Any = name if isinstance(name, Task) else _TASKS.get(name)
    if factory is None and isinstance(name, str) and (name in BUILTIN_TASKS or ":" in name):
        try:
            factory = _import(BUILTIN_TASKS.get(name, name), "task")
        except InputError:
            return None
    if not (isinstance(factory, Task) or (isinstance(factory, type) and issubclass(factory, Task))):
        return None  # a factory function: its task is only known once made
    return getattr(factory, f"{section}_signature", None)


def get_task(name: str | Task) -> Task:
    """A task instance from a name, an import path ``module:Factory`` or an instance."""
    if isinstance(name, Task):
        return name
    if name in _TASKS:
        return _TASKS[name]()
    if name in BUILTIN_TASKS:
        return _import(BUILTIN_TASKS[name], "task")()
    if ":" in str(name):
        return _import(name, "task")()
    from .config import did_you_mean

    known = sorted({*_TASKS, *BUILTIN_TASKS})
    raise InputError(f"config task: unknown task {name!r}{did_you_mean(str(name), known)}; known tasks are {known} "
                     "(or give package.module:Factory)")  # fmt: skip
