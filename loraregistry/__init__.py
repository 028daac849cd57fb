"""loraregistry: a retrieval-backed LoRA registry with a composer for text-to-image diffusion models.

The public Python API, imported on first use (PEP 562) so that ``import loraregistry`` stays cheap::

    from loraregistry import Registry, Composer, Job, AutoComposer
    reg = Registry.open("sqlite:///loras.db")
    ac = AutoComposer.from_pretrained("./sd15", reg)

The CLI (``loraregistry.cli``) is a thin layer over these.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Registry": "loraregistry.api",
    "LoraEntry": "registry.service",
    "RegistryError": "registry.errors",
    "Composer": "composer.api",
    "Job": "composer.api",
    "Result": "composer.api",
    "AutoComposer": "composer.auto",
    "Generation": "composer.params",
    "LoratorioParams": "composer.params",
    "SelectionParams": "composer.params",
    "LoraError": "composer.errors",
    "LoraRef": "composer.loras",
    "METHODS": "composer.api",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'loraregistry' has no attribute {name!r}")
