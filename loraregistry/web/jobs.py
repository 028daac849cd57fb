"""The compose job queue behind a small interface (submit, status/progress, result, list), so that
an external queue engine (RQ / Celery / Dramatiq on Redis, ``serve --queue URL``) can replace the
in-process one without the web layer changing.

``InProcessQueue``: a bounded FIFO and one worker thread that owns the warm pipeline. A full queue
raises ``QueueFull`` (the API answers 429); a job that raises is marked failed with its message
and the worker goes on with the next one.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

log = logging.getLogger("loraregistry.serve")

# (phase, steps done, steps in all): what a runner reports while it works.
Progress = Callable[[str, int, int], None]
# (job id, request, progress) -> the stored result record (see gallery.ResultStore.save).
Runner = Callable[[str, dict[str, Any], Progress], dict[str, Any]]

STATES = ("queued", "running", "done", "failed")


class QueueFull(Exception):
    """The queue holds as many waiting jobs as it may: try again later."""


class UnknownJob(KeyError):
    pass


@dataclass
class JobStatus:
    id: str
    state: str  # queued | running | done | failed
    phase: str  # what the worker is doing now, in words
    done: int = 0  # denoising steps done
    total: int = 0  # denoising steps in all (0 while unknown)
    error: str | None = None
    request: dict[str, Any] = field(default_factory=dict)
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobQueue(Protocol):
    """What the web layer needs of a job queue."""

    capacity: int

    def submit(self, request: dict[str, Any]) -> JobStatus: ...  # raises QueueFull

    def status(self, job_id: str) -> JobStatus: ...  # raises UnknownJob

    def result(self, job_id: str) -> dict[str, Any] | None: ...  # the stored record once done

    def list(self, limit: int = 20) -> list[JobStatus]: ...  # newest first

    def close(self) -> None: ...


class InProcessQueue:
    """A bounded in-memory queue and one worker thread (the pipeline is not shared between jobs).

    ``capacity``: jobs that may wait (the running one not counted). ``start``: start the worker
    now (tests fill the queue first to see the 429). Statuses of the last ``history`` jobs are kept.
    """

    def __init__(self, runner: Runner, results: Callable[[str], dict[str, Any] | None], capacity: int = 8,
                 start: bool = True, history: int = 1000) -> None:
        self.capacity = capacity
        self.runner = runner
        self._results = results
        self._pending: queue.Queue[str | None] = queue.Queue(maxsize=capacity)
        self._jobs: OrderedDict[str, JobStatus] = OrderedDict()
        self._history = history
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="loraregistry-compose", daemon=True)
            self._thread.start()

    def submit(self, request: dict[str, Any]) -> JobStatus:
        job = JobStatus(uuid.uuid4().hex, "queued", "waiting in the queue", request=request, submitted_at=time.time())
        with self._lock:
            try:
                self._pending.put_nowait(job.id)
            except queue.Full:
                raise QueueFull(f"the compose queue is full ({self.capacity} jobs waiting)") from None
            self._jobs[job.id] = job
            self._forget_old()
        return self.status(job.id)

    def status(self, job_id: str) -> JobStatus:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJob(job_id)
            return JobStatus(**asdict(job))  # a copy: the worker goes on changing the original

    def result(self, job_id: str) -> dict[str, Any] | None:
        return self._results(job_id)

    def list(self, limit: int = 20) -> list[JobStatus]:
        with self._lock:
            jobs = list(self._jobs.values())[-limit:]
        return [JobStatus(**asdict(j)) for j in reversed(jobs)]

    def waiting(self) -> int:
        return self._pending.qsize()

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._pending.put(None, timeout=1)  # wake the worker so that it ends
            except queue.Full:
                pass  # the worker is a daemon thread: the process ends it

    # -- the worker -----------------------------------------------------------------------
    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                for key, value in changes.items():
                    setattr(job, key, value)

    def _forget_old(self) -> None:
        while len(self._jobs) > self._history:
            oldest = next(iter(self._jobs))
            if not self._jobs[oldest].finished:
                break
            self._jobs.popitem(last=False)

    def _work(self) -> None:
        while True:
            job_id = self._pending.get()
            if job_id is None:
                return
            self._update(job_id, state="running", phase="starting", started_at=time.time())
            request = self.status(job_id).request

            def progress(phase: str, done: int, total: int, job_id: str = job_id) -> None:
                self._update(job_id, phase=phase, done=done, total=total)

            try:
                self.runner(job_id, request, progress)
            except Exception as exc:  # one bad job must never stop the worker
                log.warning("compose job %s failed: %s", job_id, exc, exc_info=not isinstance(exc, (ValueError, LookupError)))
                self._update(job_id, state="failed", phase="failed", error=_message(exc), finished_at=time.time())
            else:
                self._update(job_id, state="done", phase="done", finished_at=time.time())


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return text[:2000]
