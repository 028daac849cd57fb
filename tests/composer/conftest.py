"""Composer test setup: one CPU thread (the machine is shared), offline hub, tiny pipelines."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys

import pytest
import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "registry"))  # loras (Civitai sidecars)

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


@pytest.fixture(scope="session")
def sd1_loras(sd1_dir, tmp_path_factory):
    """kohya LoCon (+text encoder), diffusers/PEFT, LyCORIS LoKr (+text encoder) and LoHa files for the tiny SD1."""
    from composer_tiny import write_kohya_lora, write_loha, write_lokr, write_peft_lora
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd1_dir)
    d = tmp_path_factory.mktemp("sd1-loras")
    return {
        "kohya": write_kohya_lora(d / "kohya_locon.safetensors", pipe.unet, pipe.text_encoder),
        "peft": write_peft_lora(d / "peft.safetensors", pipe.unet),
        "lokr": write_lokr(d / "lokr.safetensors", pipe.unet, pipe.text_encoder),
        "loha": write_loha(d / "loha.safetensors", pipe.unet),
    }


@pytest.fixture(scope="session")
def sdxl_loras(sdxl_dir, tmp_path_factory):
    from composer_tiny import write_kohya_lora, write_lokr, write_peft_lora
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sdxl_dir)
    d = tmp_path_factory.mktemp("sdxl-loras")
    return {
        "kohya": write_kohya_lora(d / "xl_kohya.safetensors", pipe.unet),
        "peft": write_peft_lora(d / "xl_peft.safetensors", pipe.unet),
        "lokr": write_lokr(d / "xl_lokr.safetensors", pipe.unet),
    }


@pytest.fixture(scope="session")
def sd1_composer(sd1_dir):
    from composer import Composer

    return Composer.from_pretrained(sd1_dir, device="cpu")


@pytest.fixture(scope="session")
def sdxl_composer(sdxl_dir):
    from composer import Composer

    return Composer.from_pretrained(sdxl_dir, device="cpu")


@pytest.fixture(scope="session")
def categorised(sd1_dir, tmp_path_factory):
    """Kohya LoRAs for the tiny SD1 with Civitai sidecars whose first tag is a category, ingested."""
    from composer_tiny import write_kohya_lora
    from diffusers import DiffusionPipeline
    from loras import civitai_sidecar

    from composer import Composer
    from loraregistry.api import Registry

    pipe = DiffusionPipeline.from_pretrained(sd1_dir)
    d = tmp_path_factory.mktemp("categorised")
    paths = {}
    for i, (name, category) in enumerate([("cat", "character"), ("dog", "character"), ("hat", "clothing"),
                                          ("forest", "background"), ("ink", "style")]):
        path = write_kohya_lora(d / f"{name}.safetensors", pipe.unet, None, seed=20 + i, convs=False)
        civitai_sidecar(d / f"{name}.safetensors", model_id=300 + i, version_id=400 + i, name=f"{name} LoRA",
                        trained_words=[name], tags=[category, "toy"])
        paths[name] = path
    registry = Registry.open(f"sqlite:///{d / 'registry.db'}")
    registry.ingest(d)
    composer = Composer.from_pretrained(sd1_dir, registry=lambda: registry, device="cpu", cache_bytes=None)
    yield composer, paths
    registry.close()
