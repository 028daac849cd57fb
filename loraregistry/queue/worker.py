"""``loraregistry worker``: one long-lived process per GPU that takes compose jobs from the queue.

The pipeline is loaded before the worker consumes anything: a worker whose model cannot load
never takes a job (the jobs stay queued for the others). It then runs Dramatiq's worker with one
thread and a prefetch of one (a job waits in Redis, not in a busy worker's memory), on the one warm
``ComposeService`` (pipeline and LoRA cache kept across jobs). Results go to the results directory
keyed by job id (``ID.png``, ``ID.weights.png``, ``ID.json``, each written whole); a job whose
record is already there (its worker died after writing, before acking) is not run again.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from loraregistry.queue.engine import ACTOR, JobBook, JobFailed, QueueSettings, make_broker

log = logging.getLogger("loraregistry.worker")
# Dramatiq requeues a dead worker's job without counting; a job that takes down every worker that
# runs it is failed after this many such requeues (besides the retries of its errors).
MAX_REQUEUES = 3


def _own_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the job's own fault (bad LoRA, bad request): failed at once, not retried."""
    from registry.errors import RegistryError

    return (ValueError, LookupError, OSError, RegistryError)


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return text[:2000]


class QueueWorker:
    """Takes jobs from the queue at ``url`` and runs them on ``service`` (a warm ``ComposeService``)."""

    def __init__(self, url: str, service: Any, name: str | None = None) -> None:
        self.settings = QueueSettings.from_url(url)
        self.service = service
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.broker = make_broker(self.settings, worker=True)
        self.book = JobBook(self.broker.client)
        self._stop = threading.Event()

    def perform(self, job_id: str, kind: str, body: dict[str, Any]) -> None:
        """The actor: run one job, keep the job book current; raise ``JobFailed`` for the job's own failure."""
        from dramatiq.middleware import CurrentMessage

        attempt = self.book.started(job_id, self.name)
        log.info("job %s (%s), attempt %d", job_id, kind, attempt)
        if attempt > self.settings.retries + MAX_REQUEUES:  # its workers keep dying (out of memory?): a poison job
            error = f"gave up after {attempt - 1} attempts whose workers died mid-job"
            self.book.finished(job_id, error=error)
            raise JobFailed(error)
        if self.service.store.record(job_id) is not None:  # done before, by a worker that died before acking
            self.book.finished(job_id)
            return
        progress = lambda phase, done, total: self.book.progress(job_id, phase, done, total)
        try:
            if kind == "line":
                self.service.run_line(job_id, body, progress)
            elif kind == "request":
                self.service(job_id, body, progress)
            else:
                raise ValueError(f"unknown job kind {kind!r}")
        except _own_errors() as exc:
            log.warning("job %s failed: %s", job_id, exc)
            self.book.finished(job_id, error=_message(exc))
            raise JobFailed(_message(exc)) from exc
        except Exception as exc:  # not the job's fault (out of memory, a bug): Dramatiq's Retries decides
            message = CurrentMessage.get_current_message()
            retries = message.options.get("retries", 0) if message is not None else self.settings.retries
            log.exception("job %s: unexpected error (retry %d of %d)", job_id, retries, self.settings.retries)
            self.book.finished(job_id, error=f"{exc.__class__.__name__}: {_message(exc)}", retrying=retries < self.settings.retries)
            raise
        self.book.finished(job_id)

    def run(self, ready: Any = None) -> None:
        """Warm the pipeline (raising if it cannot load: nothing consumed), then take jobs until ``stop()``."""
        import dramatiq

        self.service.warm()
        dramatiq.actor(self.perform, actor_name=ACTOR, queue_name=self.settings.name, broker=self.broker,
                       throws=(JobFailed,), max_retries=self.settings.retries, min_backoff=1000, max_backoff=60000,
                       time_limit=int(self.settings.time_limit * 1000))
        # worker_timeout: the longest an idle consumer sleeps between fetches; its fetches are also the
        # heartbeat, so it stays well under the heartbeat timeout.
        poll_ms = max(10, int(min(self.settings.poll, self.settings.heartbeat / 4) * 1000))
        worker = dramatiq.Worker(self.broker, worker_threads=1, worker_timeout=poll_ms)
        worker.queue_prefetch = 1  # a second job waits in Redis for an idle worker, not here
        worker.start()
        log.info("worker %s takes jobs from %s (queue %r)", self.name, self.settings.redis_url, self.settings.name)
        if ready is not None:
            ready()
        try:
            self._stop.wait()
        finally:
            worker.stop(timeout=int(self.settings.time_limit * 1000))
            self.broker.close()

    def stop(self) -> None:
        self._stop.set()
