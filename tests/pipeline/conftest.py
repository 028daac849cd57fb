"""Retrieve/probe/compose test setup: the tiny SD1 pipeline of tests/composer and a registry of
generated LoRAs for it (kohya files with random weights and Civitai sidecars), ingested for real."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "composer"))  # composer_tiny
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registry"))  # loras (sidecars)

# name -> (trigger word, description, weight scale, seed). "inert" is almost the identity: its
# low-rank update is 1e-4 of the others', so its predictions match the base model's.
SKILLS = {
    "kiki": ("kiki", "an orange ring character", 0.3, 11),
    "checkerboard": ("checkerboard", "a black and white checkerboard background", 0.3, 12),
    "stripes": ("stripes", "brown horizontal stripes background", 0.3, 13),
    "inert": ("inert", "a character that changes nothing", 0.003, 14),
}


@pytest.fixture(scope="session")
def sd1_dir(tmp_path_factory) -> str:
    from composer_tiny import save_tiny_sd1

    return save_tiny_sd1(tmp_path_factory.mktemp("tiny-sd1"))


@pytest.fixture(scope="session")
def dump(sd1_dir, tmp_path_factory) -> dict[str, str]:
    """A Civitai-style dump: one kohya LoRA + sidecar per skill for the tiny SD1, plus one real-shaped
    SD 1.5 LoRA (cross-attention width 768) that the tiny pipeline must never be given."""
    from composer_tiny import write_kohya_lora
    from diffusers import UNet2DConditionModel
    from loras import civitai_sidecar, kohya_lora

    unet = UNet2DConditionModel.from_pretrained(sd1_dir, subfolder="unet")
    d = tmp_path_factory.mktemp("dump")
    paths = {}
    for i, (name, (trigger, desc, scale, seed)) in enumerate(SKILLS.items()):
        path = Path(write_kohya_lora(d / f"{name}.safetensors", unet, None, seed=seed, scale=scale, convs=False))
        civitai_sidecar(path, model_id=100 + i, version_id=200 + i, name=f"{name.title()} LoRA", trained_words=[trigger],
                        description=desc, tags=["toy"])
        paths[name] = str(path)
    sd15 = kohya_lora(d / "castle_sd15.safetensors", seed=5)
    civitai_sidecar(sd15, model_id=190, version_id=290, name="Kiki Castle SD15", trained_words=["kiki castle"],
                    description="a castle for real SD 1.5")
    paths["sd15"] = str(sd15)
    return paths


@pytest.fixture(scope="session")
def registry(dump, tmp_path_factory):
    from loraregistry.api import Registry

    reg = Registry.open(f"sqlite:///{tmp_path_factory.mktemp('reg') / 'registry.db'}")
    report = reg.ingest(os.path.dirname(dump["kiki"]))
    assert reg.stats()["versions"] == len(SKILLS) + 1, report
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def auto(sd1_dir, registry):
    from composer.auto import AutoComposer

    return AutoComposer.from_pretrained(sd1_dir, registry, device="cpu")
