"""Multi-LoRA composition on stock diffusers pipelines: LoRAtorio and the baselines, one class per
method (``composer.methods``).

Names are imported on first use (PEP 562) so that ``composer.params`` and ``composer.math`` can be
read without importing diffusers.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "METHODS": "composer.api", "Composer": "composer.api", "Job": "composer.api", "Result": "composer.api",
    "compose": "composer.api", "load_pipeline": "composer.api", "LoratorioParams": "composer.params",
    "Generation": "composer.params", "SelectionParams": "composer.params",
    "LoraError": "composer.errors", "LoraRef": "composer.loras",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'composer' has no attribute {name!r}")
