"""A real server (uvicorn on a loopback port, in a thread) and headless Chromium driven by Selenium:
Debian's ``chromium`` and ``chromium-driver``, never a browser downloaded at run time. Shared by
the browser tests and ``scripts/serve_screenshots.py``."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


def browser_paths() -> tuple[str | None, str | None, str]:
    """(chromium, chromedriver, why missing)."""
    chromium = os.environ.get("LORAREGISTRY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("LORAREGISTRY_CHROMEDRIVER") or shutil.which("chromedriver")
    chromium, driver = (p if p and os.path.isfile(p) else None for p in (chromium, driver))
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if not path]
    return chromium, driver, f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)" if missing else ""


def chrome(width: int = 1400, height: int = 1000) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver, missing = browser_paths()
    if missing:
        raise RuntimeError(missing)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    options = Options()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread; ``stop()`` ends it."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def start(self, timeout: float = 30.0) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
