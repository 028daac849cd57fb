"""Where the registry lives and which embedding model it uses, from the environment.

LORAREGISTRY_HOME   data directory (default: ~/.local/share/loraregistry, or $XDG_DATA_HOME/loraregistry)
LORAREGISTRY_DB     SQLAlchemy URL (default: SQLite file registry.db in the data directory)
LORAREGISTRY_EMBED_MODEL  sentence-transformers model id or path (default: the packaged all-MiniLM-L6-v2)
LORAREGISTRY_EMBEDDER     what computes the embeddings: auto (default), torch, onnx or onnx-int8
                          (see indexer.embed.get_embedder)
LORAREGISTRY_THREADS      threads for a big embedding job (default: the cores left free)
"""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"


def data_dir() -> Path:
    home = os.environ.get("LORAREGISTRY_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "loraregistry"


def database_url(url: str | None = None) -> str:
    """The URL to use: the given one, else $LORAREGISTRY_DB, else SQLite in the data directory."""
    url = url or os.environ.get("LORAREGISTRY_DB")
    if url:
        if "://" not in url:  # a bare path is taken as a SQLite file, as users type it
            url = f"sqlite:///{Path(url).expanduser().resolve()}"
        return url
    return f"sqlite:///{data_dir() / 'registry.db'}"


def index_dir(url: str) -> Path:
    """Where the FAISS index derived from this database lives: beside a SQLite file, else in the data dir.

    Several databases can share one data directory, so a non-SQLite index path is keyed by the URL.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        db = Path(parsed.database)
        return db.parent / (db.stem + ".index")
    import hashlib

    key = hashlib.sha256(parsed.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return data_dir() / "indexes" / key


def embed_model_name() -> str:
    return os.environ.get("LORAREGISTRY_EMBED_MODEL", DEFAULT_EMBED_MODEL)


def embedder_backend() -> str:
    return os.environ.get("LORAREGISTRY_EMBEDDER", "").strip().lower() or "auto"
