"""Registries on every backend: a temporary SQLite file, and a fresh database on a PostgreSQL server.

The server is the one $LORAREGISTRY_TEST_PG names (CI starts one, see .ci/run), else a throwaway one
started here when PostgreSQL's binaries are installed. Without either, the PostgreSQL cases are
skipped, saying why; under CI (CI=true) they fail instead, so that CI never passes without them.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from loraregistry.api import Registry
from tests.registry import pgserver

BACKENDS = ("sqlite", "postgresql")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"PostgreSQL is required in CI: {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.Server]:
    from sqlalchemy.exc import OperationalError

    url = os.environ.get("LORAREGISTRY_TEST_PG")
    own_dir = None
    if not url:
        if not pgserver.find_bin("initdb"):
            _unavailable("no server reachable ($LORAREGISTRY_TEST_PG is unset and initdb is not installed; apt-get install postgresql)")
        own_dir = tempfile.mkdtemp(prefix="loraregistry-pg-")
        try:
            url = pgserver.start(own_dir)
        except Exception as exc:
            pgserver.stop(own_dir)
            _unavailable(f"could not start a throwaway server with initdb/pg_ctl: {exc}")
    try:
        server = pgserver.Server(url)
    except OperationalError as exc:
        _unavailable(f"no server reachable at $LORAREGISTRY_TEST_PG ({exc.orig})")
    yield server
    server.close()
    if own_dir:
        pgserver.stop(own_dir)


def backend_url(request: pytest.FixtureRequest, backend: str, directory: Path, empty: bool = False) -> str:
    """A new, empty registry database on ``backend``; a PostgreSQL one is dropped after the test."""
    if backend == "sqlite":
        return f"sqlite:///{directory / 'registry.db'}"
    server = request.getfixturevalue("pg_server")
    url = server.new_database(empty=empty)
    request.addfinalizer(lambda: server.drop_database(url))
    return url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    return backend_url(request, backend, tmp_path)


@pytest.fixture
def registry(db_url: str) -> Iterator[Registry]:
    reg = Registry.open(db_url)
    yield reg
    reg.close()
