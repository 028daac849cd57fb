"""Shared test fixtures: the ../shared fixtures directory, and fresh registries on temporary SQLite."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LORAREGISTRY_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "fixtures").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED}/fixtures is missing: CI must run with ../shared beside the checkout")
        pytest.skip(f"{SHARED}/fixtures not found (set LORAREGISTRY_SHARED)")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's data directory or a registry named in the environment."""
    monkeypatch.setenv("LORAREGISTRY_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("LORAREGISTRY_DB", raising=False)
    monkeypatch.delenv("LORAREGISTRY_EMBEDDER", raising=False)  # tests choose their embedder
