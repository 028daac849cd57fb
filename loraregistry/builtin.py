"""The embedded default: the trained ToyWorld pipeline and its demo registry.

With no model configured (``--model`` or ``$LORAREGISTRY_MODEL``), ``loraregistry compose`` uses the
ToyWorld pipeline shipped in ``toyworld/assets``; with no registry configured either (``--db`` or
``$LORAREGISTRY_DB``), it searches a registry of the ToyWorld LoRA dump, ingested on first use
into the data directory. Real users point ``--model`` at SD 1.x / SDXL and ``--db`` at their own
registry; this only makes a fresh install do something real without a download.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraregistry.api import Registry

MODEL_ENV = "LORAREGISTRY_MODEL"
BUILTIN_NAME = "toyworld"
# ToyWorld's own sampling settings, measured in toyworld.generate: what its quality numbers use.
BUILTIN_STEPS, BUILTIN_CFG = 25, 2.0


def assets_dir() -> Path:
    import toyworld

    return Path(toyworld.__file__).resolve().parent / "assets"


def builtin_pipeline_dir() -> Path:
    """The finished ToyWorld pipeline, or while training is unfinished its latest committed export."""
    for name in ("pipeline", "pipeline_partial"):
        path = assets_dir() / name
        if (path / "model_index.json").is_file():
            return path
    raise FileNotFoundError(
        f"the built-in ToyWorld pipeline is missing from {assets_dir()}; "
        "train it with `python -m toyworld.train --stage all` or give --model"
    )


def builtin_dump_dir() -> Path:
    path = assets_dir() / "dump"
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(
            f"the built-in ToyWorld LoRA dump is missing from {path}; "
            "train it with `python -m toyworld.train --stage loras` or give --db"
        )
    return path


@dataclass(frozen=True)
class ModelChoice:
    """Which pipeline to load and why: shown to the user, who should know which model drew the image."""

    path: str
    builtin: bool
    source: str  # "--model", "$LORAREGISTRY_MODEL" or "built-in"

    def describe(self) -> str:
        if self.builtin:
            return f"built-in ToyWorld pipeline ({self.path}); give --model for SD 1.x / SDXL"
        return f"{self.path} (from {self.source})"


def resolve_model(model: str | None) -> ModelChoice:
    """``--model``, else ``$LORAREGISTRY_MODEL``, else the built-in ToyWorld pipeline.

    The name ``toyworld`` also selects the built-in pipeline explicitly.
    """
    source = "--model"
    if not model:
        model, source = os.environ.get(MODEL_ENV) or None, f"${MODEL_ENV}"
    if not model or model == BUILTIN_NAME:
        return ModelChoice(str(builtin_pipeline_dir()), True, "built-in")
    return ModelChoice(model, False, source)


def demo_registry_url() -> str:
    from registry.settings import data_dir

    return f"sqlite:///{(data_dir() / 'toyworld-demo.db').resolve()}"


def open_demo_registry(url: str | None = None) -> "Registry":
    """The registry of the ToyWorld dump, brought up to date with it (an unchanged re-ingest is a no-op)."""
    from loraregistry.api import Registry

    url = url or demo_registry_url()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    registry = Registry.open(url)
    report = registry.ingest(str(builtin_dump_dir()))
    if report.problems:
        raise ValueError(f"the built-in ToyWorld dump did not ingest cleanly: {report.problems[:3]}")
    return registry
