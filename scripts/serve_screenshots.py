"""Screenshots of `loraregistry serve` for the README: the library, an entry and the compose page
with a finished job, taken by headless Chromium from a real server on the built-in ToyWorld
registry and pipeline (a fresh data directory, as on a fresh install).

    .venv/bin/python scripts/serve_screenshots.py [--out docs]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "web"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    os.environ["LORAREGISTRY_HOME"] = tempfile.mkdtemp(prefix="loraregistry-shots-")
    os.environ.pop("LORAREGISTRY_DB", None)
    os.environ.pop("LORAREGISTRY_MODEL", None)

    from browser import LiveServer, chrome
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from loraregistry.web import create_app
    from loraregistry.web.server import build_state, resolve

    model, registry = resolve(None, None)
    state = build_state(model, registry, Path(os.environ["LORAREGISTRY_HOME"]) / "results", device="cpu")
    live = LiveServer(create_app(state)).start()
    driver = chrome(1360, 900)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(live.url + "/")
        WebDriverWait(driver, 30).until(lambda d: all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
            for img in d.find_elements(By.CSS_SELECTOR, ".thumb img")))
        driver.save_screenshot(str(args.out / "serve-library.png"))

        driver.get(live.url + f"/entries/{registry.find('kiki').id}")
        driver.save_screenshot(str(args.out / "serve-entry.png"))

        driver.get(live.url + "/compose")
        driver.find_element(By.ID, "prompt").send_keys("a kiki on the left, checkerboard background")
        driver.find_element(By.ID, "keep").send_keys("2")
        driver.find_element(By.ID, "compose-submit").click()
        WebDriverWait(driver, 600, 0.2).until(lambda d: d.find_element(By.ID, "job").get_attribute("data-state") in ("done", "failed"))
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "return document.getElementById('result-weights').naturalWidth > 0"))
        driver.save_screenshot(str(args.out / "serve-compose.png"))
    finally:
        driver.quit()
        live.stop()
        state.queue.close()
    for name in ("serve-library.png", "serve-entry.png", "serve-compose.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
