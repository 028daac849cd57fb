"""Alembic environment: targets registry.db.metadata, batch mode for SQLite, URL from settings.

A caller may pass an open connection in ``config.attributes["connection"]`` (tests, and the app's
own first-use upgrade), as the Alembic cookbook recommends.
"""
from __future__ import annotations

from alembic import context
from sqlalchemy import pool

import registry.models  # noqa: F401  (registers the tables on the metadata)
from registry.db import make_engine, metadata
from registry.settings import database_url

config = context.config


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or database_url()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=metadata, literal_binds=True, render_as_batch=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    context.configure(
        connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url(), poolclass=pool.NullPool)  # one-shot: no pooled connections left behind
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
