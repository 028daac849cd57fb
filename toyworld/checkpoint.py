"""Atomic save/load of training state, so that a killed run resumes where it stopped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint


def load(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    # Tensors, numbers and dicts only: a checkpoint is never a reason to run pickled code.
    return torch.load(path, map_location="cpu", weights_only=True)
