"""One metadata, one declarative Base, engines and sessions (warehouse-style).

The schema itself is created only by Alembic migrations (see registry/migrate.py).
"""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from sqlalchemy import JSON, DateTime, MetaData, create_engine, event, func
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, mapped_column, sessionmaker

# Stable constraint names, so that migrations can drop and alter them on SQLite and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

created_at = Annotated[dt.datetime, mapped_column(DateTime(timezone=True), server_default=func.now())]
updated_at = Annotated[
    dt.datetime, mapped_column(DateTime(timezone=True), server_default=func.now(), onupdate=func.now())
]


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map = {dict[str, Any]: JSON, dt.datetime: DateTime(timezone=True)}


Session = sessionmaker(expire_on_commit=False)

# Execution option of an engine whose sessions write (see ``writer_engine``).
WRITER = "loraregistry_writer"


def writer_engine(engine: Engine) -> Engine:
    """The same engine and pool, for sessions that will write: on SQLite they begin IMMEDIATE."""
    return engine.execution_options(**{WRITER: True})


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling breaks SAVEPOINT (releasing one commits); take it
            # over as the SQLAlchemy docs recommend, so a per-file savepoint rolls back cleanly.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # WAL lets searches read while an ingest writes; foreign keys are off by default in SQLite.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A writer takes the write lock up front (BEGIN IMMEDIATE, waiting up to the timeout): a
            # deferred transaction that reads first and writes later fails at once with "database is
            # locked" when another writer committed in between, whatever the timeout.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITER) else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)
