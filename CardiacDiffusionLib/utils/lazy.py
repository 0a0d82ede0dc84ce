"""Package names imported from their module on first use (PEP 562), so a command loads only what it uses."""

from __future__ import annotations

from importlib import import_module
from typing import Callable


def lazy_names(package: str, modules: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable, Callable]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose public names live in its ``modules``
    (``{module: names}``); a name is imported from ``package.module`` when it is first read."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{where[name]}"), name)

    def __dir__() -> list[str]:
        import sys

        return sorted({*vars(sys.modules[package]), *where})

    return sorted(where), __getattr__, __dir__
