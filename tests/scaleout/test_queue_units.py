"""The queue's pieces without worker processes: URL settings, the job book, and a worker's decisions
(own failure, poison job, a result already stored) with a stand-in for the composer."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from loraregistry.cli import cli
from loraregistry.queue import JobFailed, QueueSettings, RedisQueue


def test_settings_ride_on_the_url():
    s = QueueSettings.from_url("redis://h:6379/2?capacity=5&heartbeat=1.5&retries=0&name=gpu&socket_timeout=3")
    assert (s.capacity, s.heartbeat, s.retries, s.name) == (5, 1.5, 0, "gpu")
    assert s.redis_url == "redis://h:6379/2?socket_timeout=3"  # the rest is redis-py's
    with pytest.raises(ValueError, match="Dramatiq on Redis"):
        QueueSettings.from_url("amqp://h/")
    with pytest.raises(ValueError, match="capacity"):
        QueueSettings.from_url("redis://h/0?capacity=0")
    with pytest.raises(ValueError, match="not a number"):
        QueueSettings.from_url("redis://h/0?heartbeat=soon")


def test_jobs_needs_a_queue_and_says_when_it_is_unreachable():
    r = CliRunner().invoke(cli, ["jobs"], env={"LORAREGISTRY_QUEUE": ""})
    assert r.exit_code == 2 and "--queue" in r.output
    r = CliRunner().invoke(cli, ["jobs", "--queue", "redis://127.0.0.1:1/0"])
    assert r.exit_code == 1 and "cannot reach the queue" in r.output and "Traceback" not in r.output


class _Store:
    def __init__(self, stored: set[str]) -> None:
        self.stored = stored

    def record(self, job_id: str):
        return {"id": job_id} if job_id in self.stored else None


class _Service:
    """Stands in for ComposeService: fails with what it is given, else stores."""

    def __init__(self, error: Exception | None = None, stored: set[str] | None = None) -> None:
        self.error, self.runs, self.store = error, [], _Store(stored or set())

    def run_line(self, job_id, body, progress):
        self.runs.append(job_id)
        progress("composing", 1, 2)
        if self.error:
            raise self.error
        self.store.stored.add(job_id)


def test_worker_decisions(redis_db):
    from loraregistry.queue.worker import QueueWorker

    url = f"{redis_db}?name=units&retries=1"
    q = RedisQueue(url)

    own = q.enqueue("line", {"prompt": "x"})
    w = QueueWorker(url, _Service(FileNotFoundError("no such LoRA file: /x.safetensors")), name="u1")
    with pytest.raises(JobFailed, match="no such LoRA"):
        w.perform(own, "line", {"prompt": "x"})
    rec = q.record(own)
    assert (rec["state"], rec["error"], rec["worker"], rec["first_step_at"] is not None) == ("failed", "no such LoRA file: /x.safetensors", "u1", True)

    poison = q.enqueue("line", {"prompt": "x"})
    q.book.r.hset(f"loraregistry:job:{poison}", "attempts", 4)  # retries (1) + 3 attempts whose workers died
    service = _Service()
    with pytest.raises(JobFailed, match="gave up after 4 attempts"):
        QueueWorker(url, service, name="u2").perform(poison, "line", {"prompt": "x"})
    assert service.runs == [] and q.record(poison)["state"] == "failed"

    again = q.enqueue("line", {"prompt": "x"})
    service = _Service(stored={again})  # written by a worker that died before acking
    QueueWorker(url, service, name="u3").perform(again, "line", {"prompt": "x"})
    assert service.runs == [] and (q.record(again)["state"], q.record(again)["finishes"]) == ("done", 1)


def test_compose_queue_usage(tmp_path):
    r = CliRunner().invoke(cli, ["compose", "a hill", "--queue", "redis://127.0.0.1:1/0"])
    assert r.exit_code == 2 and "--batch" in r.output
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "x"}\n')
    r = CliRunner().invoke(cli, ["compose", "--batch", str(jobs), "--queue", "redis://127.0.0.1:1/0", "--model", "m", "--out", "o"])
    assert r.exit_code == 2 and "workers' model" in r.output
    jobs.write_text('{"prompt": "x", "colour": "red"}\n')
    r = CliRunner().invoke(cli, ["compose", "--batch", str(jobs), "--queue", "redis://127.0.0.1:1/0", "--out", "o"])
    assert r.exit_code == 1 and "unknown job fields: colour" in r.output  # checked before reaching the queue
