"""Queue test setup: a Redis server, a tiny SD1 pipeline saved to disk (workers are separate
processes and load it as users load theirs), LoRA files for it, and worker processes.

The server is the one $LORAREGISTRY_TEST_REDIS names (.ci/run starts one), else a throwaway one
started here from Debian's redis-server; with neither the tests skip, saying why, and under CI
(CI=true) they fail instead, so that CI never passes without them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # as the workers (LORAREGISTRY_THREADS=1): results are compared byte for byte
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "composer"))  # composer_tiny

ROOT = Path(__file__).resolve().parents[2]
# Settings every party reads from the URL: a dead worker's jobs come back after 2 s without a
# heartbeat, and every broker command runs maintenance, so that the tests take seconds.
FAST = "heartbeat=2&maintenance=1000000&retries=1"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from tests.queue import redisserver

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


class Workers:
    """``loraregistry worker`` processes, each logging to its own file."""

    def __init__(self, url: str, model: str, results: Path, home: Path, logs: Path) -> None:
        self.url, self.model, self.results, self.home, self.logs = url, model, results, home, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, model: str | None = None) -> subprocess.Popen:
        env = {**os.environ, "LORAREGISTRY_HOME": str(self.home), "LORAREGISTRY_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(ROOT)}
        env.pop("LORAREGISTRY_DB", None)
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-c", "from loraregistry.cli import main; main()", "worker", "--queue", self.url,
                                 "--model", model or self.model, "--device", "cpu", "--name", name, "--results", str(self.results)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def wait_ready(self, *names: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            while "taking jobs" not in self.log(name):
                if self.procs[name].poll() is not None:
                    raise AssertionError(f"worker {name} exited: {self.log(name)[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker {name} not ready after {timeout}s: {self.log(name)[-3000:]}")
                time.sleep(0.2)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(predicate, timeout: float = 120, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
