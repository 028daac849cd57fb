"""A throwaway Redis server on loopback for the queue tests, from Debian's ``redis-server`` package.

    eval "$(python -m tests.scaleout.redisserver start DIR)"   # prints: export LORAREGISTRY_TEST_REDIS=...
    python -m tests.scaleout.redisserver stop DIR

It listens on 127.0.0.1 at a free port, keeps nothing on disk (no RDB snapshots, no AOF) and writes
its pid, port and log into DIR.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(directory: str | os.PathLike[str]) -> str:
    """Start a server whose files live in ``directory``; returns its URL (database 0)."""
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if binary is None:
        raise FileNotFoundError("redis-server not found (apt-get install redis-server)")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    subprocess.run([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                    "--daemonize", "yes", "--dir", str(directory), "--pidfile", str(directory / "redis.pid"),
                    "--logfile", str(directory / "redis.log")], check=True, capture_output=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer on port {port}; see {directory / 'redis.log'}")
        time.sleep(0.1)
    (directory / "port").write_text(str(port))
    return f"redis://127.0.0.1:{port}/0"


def stop(directory: str | os.PathLike[str]) -> None:
    pidfile = Path(directory) / "redis.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "start":
        print(f"export LORAREGISTRY_TEST_REDIS={start(argv[1])}")
    else:
        stop(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
