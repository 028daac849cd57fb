from __future__ import annotations

from pathlib import Path

import pytest

from registry.api import Registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    yield reg
    reg.close()
