"""A throwaway PostgreSQL server on loopback for the registry tests, from Debian's packages.

    eval "$(python -m tests.registry.pgserver start DIR)"   # prints: export LORAREGISTRY_TEST_PG=...
    python -m tests.registry.pgserver stop DIR

The cluster lives in DIR (initdb as the ``postgres`` user when run as root, since PostgreSQL refuses
to run as root), listens on 127.0.0.1 at a free port, trusts local connections, and skips fsync: it
holds test data only. The test fixtures use ``new_database`` for one fresh database per test.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

USER = "postgres"
TEMPLATE = "lr_template"


def find_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else the newest Debian version under /usr/lib/postgresql."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", USER, "--", *cmd]
    return cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(directory: str | os.PathLike[str]) -> str:
    """initdb and start a server in ``directory``; returns its SQLAlchemy URL (database ``postgres``)."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("initdb/pg_ctl not found (apt-get install postgresql)")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, USER)
    data = directory / "data"
    port = _free_port()
    run = lambda cmd: subprocess.run(_as_server_user(cmd), check=True, capture_output=True, text=True, cwd=directory)
    run([initdb, "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
    options = f"-h 127.0.0.1 -p {port} -k {directory} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    run([pg_ctl, "-D", str(data), "-l", str(directory / "server.log"), "-w", "-t", "60", "-o", options, "start"])
    (directory / "port").write_text(str(port))
    return f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"


def stop(directory: str | os.PathLike[str]) -> None:
    pg_ctl = find_bin("pg_ctl")
    data = Path(directory) / "data"
    if pg_ctl and (data / "postmaster.pid").exists():
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True, cwd=directory)


class Server:
    """A reachable server (ours or the one $LORAREGISTRY_TEST_PG names) that hands out fresh databases."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.url = make_url(url)
        self.admin = create_engine(self.url, isolation_level="AUTOCOMMIT", pool_size=1)
        with self.admin.connect() as conn:  # raises OperationalError when nothing listens
            conn.exec_driver_sql("SELECT 1")
        self._template_ready = False

    def _exec(self, sql: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(sql)

    def new_database(self, empty: bool = False) -> str:
        """A new database: at the schema head (copied from a migrated template), or ``empty``."""
        name = f"lr_{uuid.uuid4().hex[:12]}"
        if not empty and not self._template_ready:
            from registry import migrate
            from registry.db import make_engine

            self._exec(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
            self._exec(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0")
            engine = make_engine(self.url.set(database=TEMPLATE).render_as_string(hide_password=False))
            migrate.upgrade(engine)
            engine.dispose()
            self._template_ready = True
        self._exec(f"CREATE DATABASE {name} TEMPLATE {'template0' if empty else TEMPLATE}")
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        self._exec(f"DROP DATABASE IF EXISTS {make_url(url).database} WITH (FORCE)")

    def close(self) -> None:
        self.admin.dispose()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "start":
        print(f"export LORAREGISTRY_TEST_PG={start(argv[1])}")
    else:
        stop(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
