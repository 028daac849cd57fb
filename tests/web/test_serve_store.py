"""The results directory: records written whole, read back newest first, pruned to ``keep``, and
files found only by job id."""
from __future__ import annotations

import os
import time
import uuid

import torch
from PIL import Image

from composer.api import Result
from loraregistry.web.gallery import ResultStore


def result(seed: int) -> Result:
    image = Image.new("RGB", (8, 8), (seed * 40 % 255, 0, 0))
    weights = [torch.full((2, 2, 2), 0.5) for _ in range(3)]
    return Result(image, f"a prompt\nSteps: 3, Seed: {seed}", {"prompt": "a prompt", "seed": seed, "steps": 3}, weights, ["a", "b"])


def test_records_round_trip_newest_first_and_prune(tmp_path):
    store = ResultStore(tmp_path, keep=2)
    ids = []
    for seed in range(3):
        job_id = uuid.uuid4().hex
        record = store.save(job_id, result(seed), {"prompt": "a prompt", "seed": seed})
        assert record == store.record(job_id)
        ids.append(job_id)
        stamp = time.time() - 100 + seed  # distinct, past mtimes however fast the disk is
        os.utime(tmp_path / f"{job_id}.json", (stamp, stamp))
    assert [r["id"] for r in store.recent()] == [ids[2], ids[1]]  # the third save pruned the first
    assert store.record(ids[0]) is None and not (tmp_path / f"{ids[0]}.png").exists()
    image = Image.open(store.file(ids[2], "image"))
    assert image.text["parameters"] == "a prompt\nSteps: 3, Seed: 2"
    assert Image.open(store.file(ids[2], "weights")).text["rows"] == "a, b"


def test_files_only_by_job_id(tmp_path):
    store = ResultStore(tmp_path)
    job_id = uuid.uuid4().hex
    store.save(job_id, result(1), {})
    assert store.file(job_id, "image") is not None
    for bad in ("../" + job_id, job_id.upper(), job_id + "/../x", "/etc/passwd", job_id[:-1]):
        assert store.file(bad, "image") is None and store.record(bad) is None
    assert store.file(job_id, "../../etc/passwd") is None
    (tmp_path / f"{'a' * 32}.png").symlink_to("/etc/passwd")
    assert store.file("a" * 32, "image") is None  # a link planted in the directory is not followed
