"""Compose jobs through the queue (Dramatiq on Redis) with real ``loraregistry worker`` processes on
the tiny SD1 pipeline: exactly-once delivery to two workers, results byte-identical to an in-process
``compose --batch``, a SIGKILLed worker's job finished by the other, failing jobs reported and not
retried, a full queue refused, a worker whose model cannot load taking nothing, and ``serve --queue``.

The module's two workers live for the whole module (a start loads torch and the pipeline); the
SIGKILL test runs last since it kills one of them.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from loraregistry.cli import cli
from tests.scaleout.workers import FAST, Workers, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def queue_url(redis_db) -> str:
    return f"{redis_db}?{FAST}"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("queue-results")


@pytest.fixture(scope="module")
def workers(queue_url, sd1_dir, results, tmp_path_factory):
    w = Workers(queue_url, sd1_dir, results, tmp_path_factory.mktemp("worker-home"), tmp_path_factory.mktemp("worker-logs"))
    w.start("w1")
    w.start("w2")
    try:
        w.wait_ready("w1", "w2")
        yield w
    finally:
        w.stop_all()


def _queue(url: str):
    from loraregistry.queue import RedisQueue

    return RedisQueue(url)


def _lines(loras: dict[str, str], n: int = 20) -> list[dict]:
    methods = ["loratorio", "merge", "switch", "composite"]
    out = []
    for i in range(n):
        picked = [loras["kohya"], [loras["peft"], 0.7]] if i % 2 == 0 else [loras["peft"]]
        out.append({"name": f"j{i:02d}", "prompt": f"a hill number {i}", "loras": picked, "method": methods[i % 4],
                    "seed": 100 + i, "steps": 2})
    return out


def test_two_workers_take_20_jobs_each_once_and_match_in_process_results(workers, queue_url, results, sd1_dir, sd1_loras, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(x) + "\n" for x in _lines(sd1_loras)))
    common = ["--width", "32", "--height", "32", "--json"]
    r = CliRunner().invoke(cli, ["compose", "--batch", str(jobs), "--queue", queue_url, "--results", str(results),
                                 "--out", str(tmp_path / "queued"), *common])
    assert r.exit_code == 0, r.output
    queued = json.loads(r.stdout)
    assert [x["name"] for x in queued] == [f"j{i:02d}" for i in range(20)]

    records = [_queue(queue_url).record(x["id"]) for x in queued]
    assert all(rec["state"] == "done" for rec in records)
    assert [(rec["attempts"], rec["finishes"]) for rec in records] == [(1, 1)] * 20  # each taken once, finished once
    assert {rec["worker"] for rec in records} == {"w1", "w2"}
    assert all(rec["finished_at"] >= rec["started_at"] >= rec["submitted_at"] for rec in records)

    r = CliRunner().invoke(cli, ["compose", "--batch", str(jobs), "--model", sd1_dir, "--device", "cpu",
                                 "--out", str(tmp_path / "local"), *common])
    assert r.exit_code == 0, r.output
    for i in range(20):
        for suffix in (".png", ".weights.png"):
            a, b = tmp_path / "queued" / f"j{i:02d}{suffix}", tmp_path / "local" / f"j{i:02d}{suffix}"
            assert a.read_bytes() == b.read_bytes(), f"{a.name} differs from the in-process run"
    assert "Composition: switch" in Image.open(tmp_path / "queued" / "j02.png").text["parameters"]
    stored = json.loads((results / f"{queued[0]['id']}.json").read_text())
    assert stored["report"]["seed"] == 100 and stored["image"] == f"{queued[0]['id']}.png"


def test_failing_jobs_are_reported_once_and_not_retried(workers, queue_url, sd1_loras, shared):
    q = _queue(queue_url)
    missing = q.enqueue("line", {"prompt": "a hill", "loras": ["/nonexistent/x.safetensors"], "steps": 2, "width": 32, "height": 32})
    flux = q.enqueue("line", {"prompt": "a hill", "loras": [str(shared / "fixtures" / "lora-files" / "flux_aitoolkit_lora.safetensors")],
                              "steps": 2, "width": 32, "height": 32})
    for job_id, says in ((missing, "/nonexistent/x.safetensors"), (flux, "flux")):
        rec = wait_for(lambda: (r := q.record(job_id)) and r["state"] == "failed" and r, what=f"{job_id} to fail")
        assert says in rec["error"] and rec["attempts"] == 1
    time.sleep(3)  # a retry would come after 1 s (Retries' min_backoff)
    assert [(q.record(j)["state"], q.record(j)["attempts"]) for j in (missing, flux)] == [("failed", 1), ("failed", 1)]

    r = CliRunner().invoke(cli, ["jobs", "--queue", queue_url, "--state", "failed", "--json"])
    assert r.exit_code == 0, r.output
    listed = {x["id"]: x for x in json.loads(r.stdout)["jobs"]}
    assert set(listed) == {missing, flux} and "flux" in listed[flux]["error"] and listed[flux]["worker"] in ("w1", "w2")
    r = CliRunner().invoke(cli, ["jobs", "--queue", queue_url, "-n", "30"])
    assert r.exit_code == 0 and f"{missing}  failed" in r.output and "error: " in r.output and "worker w" in r.output


def test_serve_submits_to_the_queue(workers, queue_url, results, sd1_dir, sd1_loras, tmp_path):
    from fastapi.testclient import TestClient

    from loraregistry import Registry
    from loraregistry.web import create_app
    from loraregistry.web.composing import ModelInfo
    from loraregistry.web.server import build_state

    state = build_state(ModelInfo(sd1_dir, None, False, "tiny", 2, 7.5), Registry.open(f"sqlite:///{tmp_path / 'r.db'}"), results,
                        queue_url=queue_url)
    with TestClient(create_app(state), base_url="http://127.0.0.1") as client:
        r = client.post("/api/jobs", json={"prompt": "a hill", "loras": [{"id": sd1_loras["kohya"], "weight": 0.8}], "steps": 2,
                                           "width": 32, "height": 32, "seed": 5})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        done = wait_for(lambda: (s := client.get(f"/api/jobs/{job_id}").json())["state"] in ("done", "failed") and s, what="the job")
        assert done["state"] == "done", done
        assert done["result"]["report"]["loras"][0]["weight"] == 0.8
        assert client.get(f"/api/jobs/{job_id}/image.png").status_code == 200
        assert job_id in [j["id"] for j in client.get("/api/jobs").json()["jobs"]]


def test_a_full_queue_refuses_submissions(redis_db, tmp_path):
    from loraregistry.web.jobs import QueueFull

    q = _queue(f"{redis_db}?name=nobody-takes&capacity=2")
    q.enqueue("line", {"prompt": "a"})
    q.enqueue("line", {"prompt": "b"})
    with pytest.raises(QueueFull, match="full"):
        q.enqueue("line", {"prompt": "c"})
    assert q.waiting() == 2
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "x"}\n')
    r = CliRunner().invoke(cli, ["compose", "--batch", str(jobs), "--queue", f"{redis_db}?name=nobody-takes&capacity=2",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "queue is full" in r.output and "0 of 1 jobs submitted" in r.output

    from fastapi.testclient import TestClient

    from loraregistry import Registry
    from loraregistry.web import create_app
    from loraregistry.web.composing import ModelInfo
    from loraregistry.web.server import build_state

    state = build_state(ModelInfo("unused", None, False, "tiny", 2, 7.5), Registry.open(f"sqlite:///{tmp_path / 'r.db'}"),
                        tmp_path / "results", queue_url=f"{redis_db}?name=nobody-takes&capacity=2")
    with TestClient(create_app(state), base_url="http://127.0.0.1") as client:
        r = client.post("/api/jobs", json={"prompt": "a hill"})
        assert r.status_code == 429 and "full" in r.text


def test_a_worker_whose_model_cannot_load_takes_no_job(redis_db, sd1_dir, tmp_path):
    url = f"{redis_db}?name=refused&{FAST}"
    q = _queue(url)
    job_id = q.enqueue("line", {"prompt": "a hill", "steps": 2})
    w = Workers(url, sd1_dir, tmp_path / "results", tmp_path / "home", tmp_path)
    proc = w.start("broken", model=str(tmp_path / "no-such-model"))
    assert proc.wait(timeout=120) == 1
    assert "takes no jobs" in w.log("broken")
    rec = q.record(job_id)
    assert (rec["state"], rec["attempts"], q.waiting()) == ("queued", 0, 1)


def test_a_sigkilled_workers_job_finishes_on_the_other(workers, queue_url, results, sd1_loras):
    q = _queue(queue_url)
    job_id = q.enqueue("line", {"prompt": "a long job", "loras": [sd1_loras["peft"]], "method": "merge", "steps": 400, "width": 64,
                                "height": 64, "seed": 9})
    rec = wait_for(lambda: (r := q.record(job_id)) and r["state"] == "running" and r["done"] >= 3 and r, what="the job to run",
                   show=lambda: q.record(job_id))
    victim = rec["worker"]
    survivor = ({"w1", "w2"} - {victim}).pop()
    os.kill(workers.procs[victim].pid, signal.SIGKILL)
    workers.procs[victim].wait()
    assert rec["done"] < 400, "the job ended before the kill: make it longer"
    rec = wait_for(lambda: (r := q.record(job_id)) and r["state"] == "done" and r, timeout=180, what="the job to finish")
    assert (rec["worker"], rec["attempts"], rec["finishes"]) == (survivor, 2, 1)
    assert (results / f"{job_id}.png").is_file() and json.loads((results / f"{job_id}.json").read_text())["id"] == job_id
    assert q.waiting() == 0
