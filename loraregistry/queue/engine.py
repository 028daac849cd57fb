"""The queue on Redis: Dramatiq's broker delivers, retries and requeues; a small job book says what
each job is doing.

Delivery is all Dramatiq's (``dramatiq.brokers.redis.RedisBroker``): a fetched message sits in the
fetching worker's ack set until it is acked; a worker that stops heart-beating for ``heartbeat``
seconds is dead, and the next maintenance run of any live worker or submitter puts its unacked
messages back on the queue. Retries of unexpected errors are the ``Retries`` middleware's
(``max_retries``, exponential backoff); a job's own failure (``JobFailed``: a missing LoRA, a
wrong-family LoRA, a bad request) is in the actor's ``throws`` and goes to the dead-letter queue at
once. Nothing here delivers, retries or locks.

The job book (one Redis hash per job, and a sorted set of ids by submit time) is observability
only: state, worker, attempts, progress, timings, error. ``loraregistry jobs`` and ``serve``'s
job pages read it.

URL: ``redis://HOST:PORT/DB`` with optional query settings that every party reads the same way:
``capacity`` (jobs queued or running before submitting is refused, default 64), ``heartbeat``
(seconds without a heartbeat before a worker's jobs are requeued, default 60), ``maintenance``
(per million broker commands that run maintenance, default 1000), ``retries`` (retries of an
unexpected error, default 2), ``time_limit`` (seconds one job may run, default 3600), ``poll``
(seconds an idle worker waits at most between fetches, default 0.1: the queue's latency per job),
``name`` (queue name, default ``compose``).
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from loraregistry.web.jobs import JobStatus, QueueFull, UnknownJob

ACTOR = "loraregistry_compose"
KINDS = ("line", "request")  # a ``compose --batch`` line; a ``serve`` compose request
PREFIX = "loraregistry:"


class JobFailed(Exception):
    """A job that fails for its own reasons: reported failed, never retried."""


@dataclass(frozen=True)
class QueueSettings:
    redis_url: str
    capacity: int = 64
    heartbeat: float = 60.0
    maintenance: int = 1000
    retries: int = 2
    time_limit: float = 3600.0
    poll: float = 0.1
    name: str = "compose"

    @classmethod
    def from_url(cls, url: str) -> "QueueSettings":
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"--queue {url!r}: expected redis://HOST:PORT/DB (the queue engine is Dramatiq on Redis)")
        ours = {f.name: f.type for f in fields(cls) if f.name != "redis_url"}
        kept, settings = [], {}
        for key, value in parse_qsl(parts.query):
            if key not in ours:
                kept.append((key, value))
                continue
            try:
                settings[key] = value if key == "name" else (float(value) if key in ("heartbeat", "time_limit", "poll") else int(value))
            except ValueError:
                raise ValueError(f"--queue: {key}={value!r} is not a number") from None
        for key in ("capacity", "heartbeat", "maintenance", "time_limit", "poll"):
            if key in settings and settings[key] <= 0:
                raise ValueError(f"--queue: {key} must be positive")
        return cls(urlunsplit(parts._replace(query=urlencode(kept))), **settings)


def make_broker(settings: QueueSettings, *, worker: bool = False):
    """Dramatiq's Redis broker; a worker's also runs its job under the ``CurrentMessage`` middleware."""
    import redis
    from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
    from dramatiq.middleware import AgeLimit, Callbacks, CurrentMessage, Pipelines, Retries, ShutdownNotifications, TimeLimit

    middleware = [AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries(max_retries=settings.retries)]
    if worker:
        middleware.append(CurrentMessage())
    client = redis.Redis.from_url(settings.redis_url)
    return RedisBroker(client=client, middleware=middleware, namespace=f"{PREFIX}dramatiq",
                       heartbeat_timeout=int(settings.heartbeat * 1000),
                       maintenance_chance=min(settings.maintenance, MAINTENANCE_SCALE))


class JobBook:
    """What each job is doing, for people: one hash per job, ids in a sorted set by submit time."""

    def __init__(self, client: Any, history: int = 10000) -> None:
        self.r = client
        self.history = history

    def _key(self, job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    def add(self, job_id: str, kind: str, name: str | None, body: dict[str, Any]) -> None:
        now = time.time()
        with self.r.pipeline() as p:
            p.hset(self._key(job_id), mapping={"id": job_id, "kind": kind, "name": name or "", "state": "queued",
                                               "phase": "waiting in the queue", "request": json.dumps(body),
                                               "submitted_at": now, "attempts": 0, "finishes": 0})
            p.zadd(f"{PREFIX}jobs", {job_id: now})
            p.execute()
        self._trim()

    def forget(self, job_id: str) -> None:
        self.r.delete(self._key(job_id))
        self.r.zrem(f"{PREFIX}jobs", job_id)

    def started(self, job_id: str, worker: str) -> int:
        with self.r.pipeline() as p:
            p.hincrby(self._key(job_id), "attempts", 1)
            p.hset(self._key(job_id), mapping={"state": "running", "phase": "starting", "worker": worker,
                                               "started_at": time.time(), "done": 0, "total": 0})
            p.hdel(self._key(job_id), "error", "finished_at", "first_step_at")
            return int(p.execute()[0])

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        with self.r.pipeline() as p:
            p.hset(self._key(job_id), mapping={"phase": phase, "done": done, "total": total})
            if done == 1 and phase == "composing":
                p.hset(self._key(job_id), "first_step_at", time.time())
            p.execute()

    def finished(self, job_id: str, error: str | None = None, retrying: bool = False) -> None:
        if retrying:
            self.r.hset(self._key(job_id), mapping={"state": "queued", "phase": "to be retried", "error": error or ""})
            return
        mapping: dict[str, Any] = {"state": "failed" if error else "done", "phase": "failed" if error else "done",
                                   "finished_at": time.time()}
        if error:
            mapping["error"] = error
        with self.r.pipeline() as p:
            p.hset(self._key(job_id), mapping=mapping)
            if not error:
                p.hincrby(self._key(job_id), "finishes", 1)
            p.execute()

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(self._key(job_id))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        for key in ("submitted_at", "started_at", "first_step_at", "finished_at"):
            d[key] = float(d[key]) if d.get(key) else None
        for key in ("attempts", "finishes", "done", "total"):
            d[key] = int(d.get(key) or 0)
        d["request"] = json.loads(d.get("request") or "{}")
        d["error"] = d.get("error") or None
        d["worker"] = d.get("worker") or None
        return d

    def ids(self, limit: int = 20) -> list[str]:
        return [x.decode() for x in self.r.zrevrange(f"{PREFIX}jobs", 0, limit - 1)]

    def _trim(self) -> None:
        extra = self.r.zcard(f"{PREFIX}jobs") - self.history
        if extra > 0:
            for job_id in self.r.zrange(f"{PREFIX}jobs", 0, extra - 1):
                self.forget(job_id.decode())


def status_of(record: dict[str, Any]) -> JobStatus:
    return JobStatus(record["id"], record["state"], record.get("phase", ""), record["done"], record["total"], record["error"],
                     record["request"], record["submitted_at"] or 0.0, record["started_at"], record["finished_at"])


class RedisQueue:
    """Submitting to and reading the queue: what ``compose --batch --queue``, ``serve --queue`` and
    ``jobs`` use. As a ``loraregistry.web.jobs.JobQueue`` it submits ``serve`` requests."""

    def __init__(self, url: str, results: Any = None) -> None:
        self.settings = QueueSettings.from_url(url)
        self.capacity = self.settings.capacity
        self.broker = make_broker(self.settings)
        self.book = JobBook(self.broker.client)
        self._results = results  # job id -> stored record (serve's ResultStore.record)

    def ping(self) -> None:
        import redis

        try:
            self.broker.client.ping()
        except redis.RedisError as exc:
            raise ConnectionError(f"cannot reach the queue at {self.settings.redis_url}: {exc}") from exc

    def waiting(self) -> int:
        """Jobs queued or being run (Dramatiq counts a message until it is acked)."""
        return int(self.broker.do_qsize(self.settings.name))

    def enqueue(self, kind: str, body: dict[str, Any], name: str | None = None) -> str:
        """Submit one job; ``QueueFull`` when ``capacity`` jobs are queued or running."""
        from dramatiq import Message

        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        n = self.waiting()
        if n >= self.capacity:
            raise QueueFull(f"the compose queue is full ({n} jobs queued or running, capacity {self.capacity}); "
                            "try again later or raise capacity= in the queue URL")
        job_id = uuid.uuid4().hex
        self.book.add(job_id, kind, name, body)
        try:
            self.broker.enqueue(Message(queue_name=self.settings.name, actor_name=ACTOR, args=(job_id, kind, body),
                                        kwargs={}, options={}))
        except Exception:
            self.book.forget(job_id)
            raise
        return job_id

    def record(self, job_id: str) -> dict[str, Any] | None:
        return self.book.get(job_id)

    def records(self, limit: int = 20) -> list[dict[str, Any]]:
        return [r for r in (self.book.get(i) for i in self.book.ids(limit)) if r is not None]

    # -- loraregistry.web.jobs.JobQueue ------------------------------------------------------
    def submit(self, request: dict[str, Any]) -> JobStatus:
        return self.status(self.enqueue("request", request))

    def status(self, job_id: str) -> JobStatus:
        record = self.book.get(job_id)
        if record is None:
            raise UnknownJob(job_id)
        return status_of(record)

    def result(self, job_id: str) -> dict[str, Any] | None:
        return self._results(job_id) if self._results else None

    def list(self, limit: int = 20) -> list[JobStatus]:
        return [status_of(r) for r in self.records(limit)]

    def close(self) -> None:
        self.broker.close()
