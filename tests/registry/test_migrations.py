"""The schema comes from Alembic migrations only, and they go both ways."""
from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from registry import migrate
from registry.db import make_engine, metadata
from tests.registry.conftest import backend_url


@pytest.fixture
def empty_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    return backend_url(request, backend, tmp_path, empty=True)


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    engine = make_engine(empty_url)
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(engine)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_models_and_migrations_agree(empty_url: str) -> None:
    """alembic check: fails when a model changes without a migration."""
    url = empty_url
    engine = make_engine(url)
    migrate.upgrade(engine)
    command.check(migrate.alembic_config(url))
    engine.dispose()


def test_registry_opens_a_new_database_at_head(tmp_path: Path) -> None:
    from loraregistry.api import Registry

    reg = Registry.open(f"sqlite:///{tmp_path / 'new' / 'r.db'}")
    assert migrate.current_revision(reg.engine) == migrate.head_revision()
