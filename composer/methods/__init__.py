"""Composition methods: one class per method, one module each, named in one table.

A method says which branches (adapter + prompt encoding) a step runs, how their predictions
combine (a rule for :class:`composer.denoiser.MultiLoraDenoiser`), what it changes between steps
(callbacks) or inside the UNet's layers while it runs (hooks), which per-LoRA weights a weights
map shows, and its parameters for reports and PNG text (the contract is
:class:`composer.methods.base.Method`). Adding a method is a new module and one line here.

This module imports no torch, so that the CLI can list the names cheaply.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from composer.methods.base import Method

# name -> "module:Class"
METHODS: dict[str, str] = {
    "base": "composer.methods.single:Base",
    "merge": "composer.methods.single:Merge",
    "switch": "composer.methods.switch:Switch",
    "composite": "composer.methods.composite:Composite",
    "loratorio": "composer.methods.loratorio:Loratorio",
    "grounded-loratorio": "composer.methods.grounded_loratorio:GroundedLoratorio",
    "regional": "composer.methods.regional:Regional",
    "by-role": "composer.methods.by_role:ByRole",
    "fusion": "composer.methods.fusion:Fusion",
}
NAMES: tuple[str, ...] = tuple(METHODS)
DEFAULT = "by-role"  # measured best: benchmarks/results/toyworld_quality_by_role.md


def method_class(name: str) -> type["Method"]:
    """The class of the method called ``name``; ValueError naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(NAMES)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def for_job(job: Any) -> "Method":
    """The method a job asks for, configured from the job's options."""
    return method_class(job.method).from_job(job)
