"""The server over the ToyWorld registry: the built-in dump (8 LoRAs with previews) ingested for real
into a temporary SQLite registry, plus a catalog of filler records (paging, filters), a hostile
record (escaping) and one more LoRA file with a preview (file serving), and the built-in pipeline.
"""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.registry.loras import civitai_sidecar, kohya_lora

HOST = "http://127.0.0.1:8765"
FILLERS = 120
HOSTILE_ID = 990001
# What a hostile Civitai record may carry: HTML in the description (entity-escaped, so that the
# ingest's HTML-to-text turns it into literal markup), and markup in every short field.
HOSTILE = {
    "id": HOSTILE_ID, "type": "LORA", "nsfw": False,
    "name": "<b onmouseover=alert(1)>Evil Model</b>",
    "description": "<p>&lt;script&gt;alert('desc')&lt;/script&gt; and &lt;img src=x onerror=alert(2)&gt;</p>"
                   "<script>alert('raw')</script>",
    "tags": ["<i>evil</i>"],
    "creator": {"username": "<svg onload=alert(3)>"},
    "modelVersions": [{
        "id": HOSTILE_ID + 1, "name": "v1 <u>", "baseModel": "SD 1.5",
        "trainedWords": ['"><script>alert(4)</script>', "evilword"],
        "description": "<p>&lt;iframe src=javascript:alert(5)&gt;</p>",
        "files": [{"id": HOSTILE_ID + 2, "name": "evil.safetensors", "type": "Model", "primary": True,
                   "hashes": {"SHA256": "ab" * 32}}],
    }],
}  # fmt: skip


def filler(i: int) -> dict[str, Any]:
    return {
        "id": 500000 + i, "name": f"Filler Model {i:03d}", "type": "LORA", "nsfw": False,
        "description": f"filler record number {i}", "tags": ["filler", f"group{i % 3}"],
        "creator": {"username": f"maker{i % 4}"},
        "modelVersions": [{
            "id": 600000 + i, "name": "v1", "baseModel": "SDXL 1.0" if i % 2 else "SD 1.5",
            "trainedWords": [f"fillword{i:03d}"],
            **({"stats": {"downloadCount": i * 37 % 1000, "ratingCount": i % 5, "rating": 5 - i % 4}} if i % 7 else {}),
            "files": [{"id": 700000 + i, "name": f"filler_{i:03d}.safetensors", "type": "Model", "primary": True}],
        }],
    }  # fmt: skip


@pytest.fixture(scope="session")
def extra_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One LoRA file with a preview and hostile header metadata, and the catalog beside it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("web-dump")
    adapter = kohya_lora(root / "extra_lora.safetensors", seed=77,
                         metadata={"ss_output_name": "<script>alert('header')</script>"})
    civitai_sidecar(adapter, model_id=880001, version_id=880002, name="Extra Lora", trained_words=["extraword"],
                    tags=["extra"], description="an extra LoRA")
    Image.new("RGB", (16, 16), (10, 200, 30)).save(root / "extra_lora.preview.png")
    with gzip.open(root / "catalog.jsonl.gz", "wt") as fh:
        for i in range(FILLERS):
            fh.write(json.dumps(filler(i)) + "\n")
        fh.write(json.dumps(HOSTILE) + "\n")
    return root


@pytest.fixture(scope="session")
def toy_url(tmp_path_factory: pytest.TempPathFactory, extra_dump: Path) -> str:
    from loraregistry.builtin import open_demo_registry

    url = f"sqlite:///{tmp_path_factory.mktemp('web-registry') / 'registry.db'}"
    reg = open_demo_registry(url)  # the built-in ToyWorld dump, as `serve` on a fresh install
    report = reg.ingest(extra_dump)
    assert not report.problems, report.to_dict()
    reg.close()
    return url


@pytest.fixture(scope="session")
def toy_registry(toy_url: str):
    from loraregistry import Registry

    reg = Registry.open(toy_url)
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def model_info():
    from loraregistry.builtin import BUILTIN_CFG, BUILTIN_NAME, BUILTIN_STEPS, builtin_pipeline_dir
    from loraregistry.web.composing import ModelInfo

    return ModelInfo(str(builtin_pipeline_dir()), BUILTIN_NAME, True, "built-in ToyWorld pipeline", BUILTIN_STEPS, BUILTIN_CFG)


@pytest.fixture(scope="session")
def state(toy_registry, model_info, tmp_path_factory: pytest.TempPathFactory):
    """One server's state for the session: its worker thread and warm pipeline are shared."""
    import torch

    from loraregistry.web.server import build_state

    torch.set_num_threads(1)
    st = build_state(model_info, toy_registry, tmp_path_factory.mktemp("results"), device="cpu", queue_size=4)
    yield st
    st.queue.close()


def make_client(state, token: str | None = None, host: str = HOST):
    from fastapi.testclient import TestClient

    from loraregistry.web import create_app

    return TestClient(create_app(state, token=token), base_url=host)


@pytest.fixture(scope="session")
def client(state):
    return make_client(state)


def wait_for(client, job_id: str, timeout: float = 600.0, seen: list[dict] | None = None) -> dict[str, Any]:
    """Poll a job until it ends; every distinct status seen goes into ``seen``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/api/jobs/{job_id}").json()
        if seen is not None and (not seen or seen[-1]["done"] != view["done"] or seen[-1]["phase"] != view["phase"]):
            seen.append(view)
        if view["state"] in ("done", "failed"):
            return view
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {view}")


def entry_id(registry, name: str) -> int:
    return registry.find(name).id


Finder = Callable[[str], int]
