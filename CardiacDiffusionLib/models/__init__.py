"""Trained models: the store (safetensors + registries, checked before use) and the architecture registry."""

from .store import (
    LoadedModel,
    add_model,
    build_architecture,
    list_models,
    load_model,
    register_architecture,
    save_model,
    verify_model,
)

__all__ = [
    "LoadedModel",
    "add_model",
    "build_architecture",
    "list_models",
    "load_model",
    "register_architecture",
    "save_model",
    "verify_model",
]
