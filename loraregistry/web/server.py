"""Wiring one server process: the registry, the warm pipeline behind the job queue, the results.

With no model configured the built-in ToyWorld pipeline composes and, with no registry configured
either, the ToyWorld demo registry is served (as ``loraregistry compose`` does), so that
``loraregistry serve`` on a fresh install shows something real.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from loraregistry.web.app import ServeState
from loraregistry.web.catalog import SerialSearch
from loraregistry.web.composing import ComposeService, ModelInfo
from loraregistry.web.gallery import ResultStore
from loraregistry.web.jobs import InProcessQueue, JobQueue

log = logging.getLogger("loraregistry.serve")


def resolve(model: str | None, db_url: str | None) -> tuple[ModelInfo, Any]:
    """The model to compose with and the registry to serve, by the rules of ``compose``."""
    from loraregistry import Registry
    from loraregistry.builtin import BUILTIN_CFG, BUILTIN_NAME, BUILTIN_STEPS, open_demo_registry, resolve_model

    choice = resolve_model(model)
    if choice.builtin:
        info = ModelInfo(choice.path, BUILTIN_NAME, True, choice.describe(), BUILTIN_STEPS, BUILTIN_CFG)
    else:
        info = ModelInfo(choice.path, None, False, choice.describe(), 20, 7.5)
    registry = open_demo_registry() if choice.builtin and db_url is None else Registry.open(db_url)
    return info, registry


def build_state(model: ModelInfo, registry: Any, results_dir: str | Path, *, device: str | None = None,
                dtype: str = "auto", queue_size: int = 8, start_worker: bool = True, warm: bool = False,
                keep_results: int = 500, queue_url: str | None = None) -> ServeState:
    """The state a server holds. ``warm``: load the pipeline now, in the background, so that the
    first job does not wait for it. ``queue_url``: compose jobs go to that queue (``loraregistry
    worker`` runs them and writes to ``results_dir``) instead of a worker thread here."""
    registry = SerialSearch(registry)
    store = ResultStore(results_dir, keep=keep_results)
    service = ComposeService(model, registry, store, device=device, dtype=dtype)
    if queue_url:
        from loraregistry.queue import RedisQueue

        queue: JobQueue = RedisQueue(queue_url, store.record)
    else:
        queue = InProcessQueue(service, store.record, capacity=queue_size, start=start_worker)
    if warm:
        def load() -> None:
            try:
                service.warm()
            except Exception as exc:  # reported by the first job too; the library still serves
                log.error("cannot load the pipeline %s: %s", model.path, exc)

        threading.Thread(target=load, name="loraregistry-warm", daemon=True).start()
    return ServeState(registry, queue, store, defaults=service.defaults(), model_description=model.description)
