"""A registry shared by several processes and machines: index caches that notice changes, two ingests
at once, ingests killed with SIGKILL, and a data directory that cannot be written.

Workers are real processes (tests/registry/ingest_worker.py) with a hash embedder, so that they start
in a second or two; every test runs on SQLite and on PostgreSQL.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

import indexer.faiss_index as faiss_index
from loraregistry.api import Registry
from registry.errors import RegistryError
from registry.models import Embedding, LoraFile, LoraModel, Tag, Version
from tests.registry.conftest import backend_url
from tests.registry.ingest_worker import HASH_EMBED_MODEL, install_hash_embedder
from tests.registry.loras import civitai_sidecar, kohya_lora

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _hash_embedder() -> None:
    install_hash_embedder()


def open_registry(url: str, index_dir: Path | None = None) -> Registry:
    return Registry.open(url, embed_model=HASH_EMBED_MODEL, index_dir=index_dir)


def make_tagged_dump(root: Path, n: int, first: int = 0) -> list[Path]:
    """n adapters with Civitai sidecars; every model shares the tags 'shared' and 'style' (a race for
    two ingests creating the same tag rows)."""
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(first, first + n):
        path = kohya_lora(root / f"lora_{i:03d}.safetensors", seed=i, rank=2)
        civitai_sidecar(path, model_id=5000 + i, version_id=6000 + i, name=f"Subject {i}", trained_words=[f"trig{i}"], tags=["shared", "style", f"t{i % 4}"])
        files.append(path)
    bare = root / "bare"
    bare.mkdir(exist_ok=True)
    for i in range(first, first + max(1, n // 4)):  # no sidecar: a synthesised model each
        files.append(kohya_lora(bare / f"bare_{i:03d}.safetensors", seed=10_000 + i, rank=2))
    return files


def worker(url: str, dump: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.registry.ingest_worker", url, str(dump), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_consistent(reg: Registry, files: list[Path]) -> None:
    """Every file exactly once, one model and one embedding each, and an index that matches SQL."""
    with reg.session() as s:
        paths = s.scalars(select(LoraFile.path).where(LoraFile.status == "present")).all()
        assert sorted(paths) == sorted(map(str, files))
        assert s.scalar(select(func.count(LoraFile.id))) == len(files)
        assert s.scalar(select(func.count(Version.id))) == len(files)
        assert s.scalar(select(func.count(LoraModel.id))) == len(files)
        assert s.scalar(select(func.count(Embedding.model_id))) == len(files)
        assert sorted(s.scalars(select(Tag.name)).all())[:2] == ["shared", "style"]
    reg.reindex(only_if_stale=True)
    stats = reg.stats()
    assert stats["index"]["current"] and stats["index"]["vectors"] == len(files)
    assert not [p for p in reg.index_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(list(reg.index_dir.glob("index-*.faiss"))) == 1


def test_each_machine_notices_a_changed_registry(db_url: str, tmp_path: Path) -> None:
    """Two machines: one registry in SQL, a FAISS cache each; a change by one is served by the other."""
    a = open_registry(db_url, tmp_path / "machine_a")
    b = open_registry(db_url, tmp_path / "machine_b")
    make_tagged_dump(tmp_path / "dump1", 4)
    a.ingest(tmp_path / "dump1")
    assert b.search("trig2", k=1)[0].entry.name == "Subject 2"
    stamp = faiss_index.read_manifest(b.index_dir).stamp
    make_tagged_dump(tmp_path / "dump2", 4, first=10)
    a.ingest(tmp_path / "dump2")  # b's cache is now stale: the stamp in SQL moved on
    assert b.search("trig12", k=1)[0].entry.name == "Subject 12"
    manifest = faiss_index.read_manifest(b.index_dir)
    assert manifest.stamp > stamp and manifest.count == 10
    b.remove(b.find("trig1").id)
    assert all(h.entry.name != "Subject 1" for h in a.search("trig1", k=10))
    assert faiss_index.read_manifest(a.index_dir).count == 9
    a.close()
    b.close()


def test_two_ingests_at_once_while_searching(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> None:
    """Two processes ingest one dump, and a third another dump, into a new, empty database (all
    migrate it first) while this one searches; the same files and shared tags collide on unique keys."""
    db_url = backend_url(request, backend, tmp_path, empty=True)
    dump, other = tmp_path / "dump", tmp_path / "other"
    files = make_tagged_dump(dump, 32) + make_tagged_dump(other, 12, first=100)
    procs = [worker(db_url, d, "--batch-size", "4") for d in (dump, dump, other)]
    reg = open_registry(db_url)
    searches = 0
    while any(p.poll() is None for p in procs):  # searches run while both ingests write
        reg.search("trig3, shared style", k=3)
        searches += 1
    results = [finish(p) for p in procs]
    for code, out, err in results:
        assert code == 0, err[-3000:]
        report = json.loads(out)
        assert report["ok"] and not report["problems"], report["problems"]
    counts = [json.loads(out)["counts"] for _, out, _ in results]
    # together they added each file once; what one added the other found unchanged
    assert searches > 0
    assert_consistent(reg, files)
    added = sum(c.get("added", 0) for c in counts)
    assert added == len(files)
    assert reg.search("trig17", k=1)[0].entry.name == "Subject 17"
    reg.close()


def test_kill_9_at_several_points_then_resume(db_url: str, tmp_path: Path) -> None:
    """SIGKILL mid-batch, after embedding before commit, mid-index-write, and at a random moment:
    each next run finds SQL and FAISS consistent and finishes without duplicates or losses."""
    dump = tmp_path / "dump"
    files = make_tagged_dump(dump, 12)
    rng = random.Random(int(os.environ.get("KILL_SEED", "6")))
    kills = [("--kill-at", str(rng.randint(2, 5))), ("--kill-in", "embed"), ("--kill-at", str(rng.randint(8, 14))),
             ("--kill-in", "index"), ("--kill-after", f"{rng.uniform(0.5, 2.0):.2f}")]  # fmt: skip
    reg = open_registry(db_url)
    for flag, value in kills:
        code, out, err = finish(worker(db_url, dump, "--batch-size", "3", flag, value))
        assert code in (-signal.SIGKILL, 0), err[-3000:]
        with reg.session() as s:  # whatever landed landed whole: every present file has its model and embedding
            present = s.scalar(select(func.count(LoraFile.id)).where(LoraFile.status == "present"))
            assert s.scalar(select(func.count(Embedding.model_id))) == s.scalar(select(func.count(LoraModel.id))) == present
        assert faiss_index.read_manifest(reg.index_dir) is None or faiss_index.load_index(reg.index_dir) is not None
    code, out, err = finish(worker(db_url, dump, "--batch-size", "3"))
    assert code == 0, err[-3000:]
    assert json.loads(out)["ok"]
    assert_consistent(reg, files)
    reg.close()


def test_unwritable_index_directory_is_a_clear_error(db_url: str, tmp_path: Path) -> None:
    """The index directory cannot be created (its parent is a file, which stops root too): the ingest
    lands in SQL, the error says what and where, and the CLI shows no traceback."""
    from click.testing import CliRunner

    from loraregistry.cli import cli

    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    make_tagged_dump(tmp_path / "dump", 3)
    reg = open_registry(db_url, index_dir=blocker / "index")
    with pytest.raises(RegistryError, match=r"cannot write the search index in .*not_a_dir/index .*Not a directory"):
        reg.ingest(tmp_path / "dump")
    assert reg.find("trig1").name == "Subject 1"  # SQL has it all
    if db_url.startswith("sqlite"):
        os.environ["LORAREGISTRY_EMBED_MODEL"] = HASH_EMBED_MODEL
        try:
            result = CliRunner().invoke(cli, ["--db", f"sqlite:///{blocker}/r.db", "stats"])
        finally:
            del os.environ["LORAREGISTRY_EMBED_MODEL"]
        assert result.exit_code == 1 and "Traceback" not in result.output and "not_a_dir" in result.output


def test_full_disk_keeps_the_good_index(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC halfway through writing the index file: the old index stays in use, nothing half-written."""
    make_tagged_dump(tmp_path / "dump", 3)
    reg = open_registry(db_url)
    reg.ingest(tmp_path / "dump")
    good = faiss_index.read_manifest(reg.index_dir)
    make_tagged_dump(tmp_path / "dump2", 2, first=20)
    real_fdopen = faiss_index.os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss_index.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(RegistryError, match="No space left on device"):
        reg.ingest(tmp_path / "dump2")
    monkeypatch.undo()
    assert faiss_index.read_manifest(reg.index_dir) == good and faiss_index.load_index(reg.index_dir) is not None
    assert sorted(p.name for p in reg.index_dir.iterdir()) == sorted([".lock", "manifest.json", good.index_file])
    assert reg.search("trig21", k=1)[0].entry.name == "Subject 21"  # the next search rebuilds it
    reg.close()


def test_read_only_database_is_a_clear_error(tmp_path: Path) -> None:
    """A SQLite registry opened read-only: the ingest stops with one message, not a traceback."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    open_registry(url).close()
    make_tagged_dump(tmp_path / "dump", 2)
    reg = open_registry(f"sqlite:///file:{tmp_path / 'r.db'}?mode=ro&uri=true", index_dir=tmp_path / "index")
    with pytest.raises(RegistryError, match="cannot write to the registry: attempt to write a readonly database"):
        reg.ingest(tmp_path / "dump")
    reg.close()


def test_ingest_loads_its_embedder_before_taking_the_write_lock(tmp_path: Path) -> None:
    """Loading the embedding model takes seconds (more on a busy machine). An ingest that loaded it
    inside its SQLite write transaction held the lock meanwhile, and a second process opening the
    same registry (two queue workers on one machine) failed with "database is locked" once its busy
    timeout ran out. Whenever the model is asked for first, another connection can still write."""
    import sqlite3

    db = tmp_path / "registry.db"
    reg = open_registry(f"sqlite:///{db}", index_dir=tmp_path / "index")
    make_tagged_dump(tmp_path / "dump", 3)
    loaded = type(reg).embedder
    free_at_first_call: list[bool] = []

    def embedder(self):
        if not free_at_first_call:
            other = sqlite3.connect(db, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                free_at_first_call.append(True)
            except sqlite3.OperationalError:  # "database is locked": this ingest holds the write lock
                free_at_first_call.append(False)
            finally:
                other.close()
        return loaded(self)

    reg.embedder = embedder.__get__(reg)
    report = reg.ingest(tmp_path / "dump")
    assert report.counts["embedded"] == 3 + 1 and free_at_first_call == [True]


def test_an_open_that_meets_a_lock_waits_and_retries(tmp_path: Path, monkeypatch) -> None:
    """Two queue workers sharing a home opened one new SQLite registry at once and one exited with
    "database is locked" (a lock SQLite's busy timeout does not wait on). Such an open is retried
    until it succeeds; any other failure is one clear error at once."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    import loraregistry.api as api

    real = api.migrate.ensure_head
    calls: list[int] = []

    def locked_twice(engine):
        calls.append(1)
        if len(calls) <= 2:
            raise OperationalError("PRAGMA journal_mode=WAL", {}, sqlite3.OperationalError("database is locked"))
        return real(engine)

    monkeypatch.setattr(api.migrate, "ensure_head", locked_twice)
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}", index_dir=tmp_path / "index")
    assert len(calls) == 3 and reg.list() == []
    reg.close()

    def broken(engine):
        calls.append(1)
        raise OperationalError("SELECT", {}, sqlite3.OperationalError("disk I/O error"))

    calls.clear()
    monkeypatch.setattr(api.migrate, "ensure_head", broken)
    with pytest.raises(RegistryError, match="cannot open registry .*disk I/O error"):
        Registry(f"sqlite:///{tmp_path / 'r2.db'}", index_dir=tmp_path / "index2")
    assert len(calls) == 1
    def always_locked(engine):
        raise OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(api, "OPEN_WAIT", 0.2)  # a lock that outlasts the wait: the same clear error
    monkeypatch.setattr(api.migrate, "ensure_head", always_locked)
    with pytest.raises(RegistryError, match="cannot open registry .*database is locked"):
        Registry(f"sqlite:///{tmp_path / 'r3.db'}", index_dir=tmp_path / "index3")
