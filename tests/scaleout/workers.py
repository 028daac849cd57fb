"""Helpers of the queue tests: ``loraregistry worker`` processes and waiting for a condition."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Settings every party reads from the URL: a dead worker's jobs come back after 2 s without a
# heartbeat, and every broker command runs maintenance, so that the tests take seconds.
FAST = "heartbeat=2&maintenance=1000000&retries=1"


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


def wait_for(predicate, timeout: float = 120, interval: float = 0.1, what: str = "condition", show=None):
    """``predicate()`` once it is true; on timeout an AssertionError with ``show()`` (what was seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {show()}" if show else ""))
        time.sleep(interval)
