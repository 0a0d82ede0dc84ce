"""Training: one runner for every workflow; a workflow supplies a small :class:`Task`.

The runner and tasks (torch) load on first use, so ``cardiac-diffusion --help`` does not import torch.
"""

from ..utils.lazy import lazy_names
from .config import load_config as load_config, parse_overrides as parse_overrides  # eager: torch-free

_lazy, __getattr__, __dir__ = lazy_names(__name__, {"runner": ("TrainResult", "train"),
                                                    "task": ("Task", "get_task", "register_task")})  # fmt: skip
__all__ = sorted([*_lazy, "load_config", "parse_overrides"])
