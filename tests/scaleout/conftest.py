"""Queue test setup: a Redis server, a tiny SD1 pipeline saved to disk (workers are separate
processes and load it as users load theirs), LoRA files for it, and worker processes.

The server is the one $LORAREGISTRY_TEST_REDIS names (.ci/run starts one), else a throwaway one
started here from Debian's redis-server; with neither the tests skip, saying why, and under CI
(CI=true) they fail instead, so that CI never passes without them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # as the workers (LORAREGISTRY_THREADS=1): results are compared byte for byte
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "composer"))  # composer_tiny



def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from tests.scaleout import redisserver

    url = os.environ.get("LORAREGISTRY_TEST_REDIS")
    started = None
    if not url:
        try:
            started = tmp_path_factory.mktemp("redis")
            url = redisserver.start(started)
        except (FileNotFoundError, RuntimeError, subprocess.CalledProcessError) as exc:
            if _in_ci():
                pytest.fail(f"Redis is required in CI: {exc}")
            pytest.skip(f"no Redis for the queue tests: {exc}")
    import redis

    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        if _in_ci():
            pytest.fail(f"Redis is required in CI: {url}: {exc}")
        pytest.skip(f"no Redis reachable at {url}: {exc}")
    yield url
    if started is not None:
        redisserver.stop(started)


@pytest.fixture(scope="module")
def redis_db(redis_server):
    """A Redis URL of one database, emptied before and after the module that uses it."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    yield redis_server
    client.flushdb()


@pytest.fixture(scope="session")
def sd1_dir(tmp_path_factory) -> str:
    from composer_tiny import save_tiny_sd1

    return save_tiny_sd1(tmp_path_factory.mktemp("tiny-sd1"))


@pytest.fixture(scope="session")
def sd1_loras(sd1_dir, tmp_path_factory) -> dict[str, str]:
    from composer_tiny import write_kohya_lora, write_peft_lora
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd1_dir)
    d = tmp_path_factory.mktemp("sd1-loras")
    return {"kohya": write_kohya_lora(d / "kohya.safetensors", pipe.unet, pipe.text_encoder),
            "peft": write_peft_lora(d / "peft.safetensors", pipe.unet)}


