"""Alembic, configured in code so that it works from an installed package as from a checkout."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

import migrations


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# Key of the PostgreSQL advisory lock that serialises migrations (any constant unique to this app).
MIGRATION_LOCK_KEY = 0x4C6F5261


@contextlib.contextmanager
def _exclusive(engine: Engine) -> Iterator[Connection]:
    """A transaction that no other process migrating the same database runs alongside: PostgreSQL
    takes an advisory lock, SQLite the write lock (BEGIN IMMEDIATE)."""
    from registry.db import writer_engine

    with writer_engine(engine).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        yield conn


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with _exclusive(engine) as conn:
        if revision == "head" and MigrationContext.configure(conn).get_current_revision() == head_revision():
            return  # another process upgraded it while this one waited for the lock
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with _exclusive(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def ensure_head(engine: Engine) -> None:
    """Upgrade a new or older database to head on first use; a no-op when it is current. Processes
    opening a new registry at once take turns: one migrates, the others find it done."""
    if current_revision(engine) != head_revision():
        upgrade(engine)
