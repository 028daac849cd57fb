"""Composer test setup: one CPU thread (the machine is shared), offline hub, tiny pipelines."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures", "lora-files")
FIXTURES = os.path.normpath(os.environ.get("LORA_FIXTURES", FIXTURES))


@pytest.fixture(scope="session")
def fixtures_dir() -> str:
    if not os.path.isdir(FIXTURES):
        pytest.skip(f"real LoRA fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def sd1_dir(tmp_path_factory):
    from composer_tiny import save_tiny_sd1

    return save_tiny_sd1(tmp_path_factory.mktemp("tiny-sd1"))


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory):
    from composer_tiny import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))
