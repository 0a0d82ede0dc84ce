"""Training: one runner for every workflow; a workflow supplies a small :class:`Task`."""

from .config import load_config, parse_overrides
from .runner import TrainResult, train
from .task import Task, get_task, register_task

__all__ = ["Task", "TrainResult", "get_task", "load_config", "parse_overrides", "register_task", "train"]
