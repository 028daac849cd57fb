"""The registry's Python API: open a registry by URL, ingest, search, get entries.

    from loraregistry.api import Registry
    reg = Registry.open("sqlite:///loras.db")      # None: $LORAREGISTRY_DB or the default file
    reg.ingest("./civitai_dump")
    for hit in reg.search("a knight in armor, castle background", k=5):
        print(hit.entry.name, hit.entry.file_path, hit.score)
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from registry import migrate, settings
from registry.db import Session as SessionFactory
from registry.db import make_engine, writer_engine
from registry.errors import Ambiguous, IndexUnavailable, InvalidInput, NotFound, RegistryError
from registry.models import LoraFile, LoraModel, ScannedPath, Tag, TriggerWord, Version
from registry.service import LoraEntry, clean_name, entry_of, read_stamp, version_query
from registry.sorts import LIST_SORTS
from registry.text import normalize_word

# ``Registry.list`` orders (registry.sorts): the columns sorted on, highest first, then by id.
LIST_ORDERS = {"id": (), "downloads": (Version.downloads,), "rating": (Version.rating, Version.rating_count)}
assert tuple(LIST_ORDERS) == LIST_SORTS


def list_order(sort: str) -> list:
    """The ORDER BY clauses of a ``sort`` of ``LIST_ORDERS``: highest first, entries without the
    stat last, then by id; InvalidInput for an unknown one."""
    if sort not in LIST_ORDERS:
        raise InvalidInput(f"unknown sort {sort!r}: one of {', '.join(LIST_ORDERS)}")
    return [c.desc().nulls_last() for c in LIST_ORDERS[sort]] + [Version.id]


OPEN_WAIT = 60.0  # seconds a registry open waits out another process's lock (the SQLite busy timeout's)


class Registry:
    """A registry: SQL (the source of truth) plus the FAISS index derived from its embeddings."""

    def __init__(self, url: str, embed_model: str | None = None, index_dir: Path | None = None, embedder: str | None = None) -> None:
        self.url = url
        self.embed_model_name = embed_model or settings.embed_model_name()
        self.embedder_backend = embedder  # None: $LORAREGISTRY_EMBEDDER, else auto (indexer.embed)
        self.index_dir = index_dir or settings.index_dir(url)
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(f"cannot create the registry's directory {Path(parsed.database).parent}: {exc.strerror or exc}") from exc
        self.engine = make_engine(url)
        self._writer = writer_engine(self.engine)
        self._migrate(parsed.render_as_string(hide_password=True))
        self._searcher: Any = None
        self._lock = threading.Lock()

    def _migrate(self, shown_url: str) -> None:
        """Bring the schema to head. Two queue workers sharing a home opened one new SQLite
        registry at once and one failed with "database is locked" (seen once in CI, on a loaded
        machine; not reproduced with six processes, so which lock the busy timeout did not wait out
        is not known). Such an open is retried for up to OPEN_WAIT seconds; any other error is
        reported at once."""
        deadline = time.monotonic() + OPEN_WAIT
        delay = 0.05
        while True:
            try:
                migrate.ensure_head(self.engine)
                return
            except OperationalError as exc:
                if "locked" not in str(exc.orig) or time.monotonic() + delay > deadline:
                    raise RegistryError(f"cannot open registry {shown_url}: {exc.orig}") from exc
                self.engine.dispose()  # a fresh connection sets the journal mode again
                time.sleep(delay)
                delay = min(2 * delay, 1.0)

    @classmethod
    def open(cls, url: str | None = None, **kwargs: Any) -> "Registry":
        return cls(settings.database_url(url), **kwargs)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One unit of work: committed by the caller, rolled back and closed on error.

        ``write``: the session will write, so on SQLite each of its transactions takes the write lock
        when it begins (readers never wait for a writer under WAL, and never take that lock).
        """
        session = SessionFactory(bind=self._writer if write else self.engine)
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def embedder(self):
        from indexer.embed import get_embedder

        return get_embedder(self.embed_model_name, self.embedder_backend)

    # -- writing ------------------------------------------------------------------------------
    def ingest(self, path: str | os.PathLike[str], *, verify: bool = False, follow_symlinks: bool = False, progress=None, batch_size: int = 200):
        """Ingest a dump directory or a JSON Lines catalog file; returns an IngestReport."""
        from indexer.ingest import Ingester

        path = os.fspath(path)
        ingester = Ingester(self, verify=verify, progress=progress, batch_size=batch_size)
        if os.path.isfile(path) and path.endswith((".jsonl", ".jsonl.gz")):
            report = ingester.ingest_catalog(os.path.abspath(path))
        elif os.path.isdir(path):
            report = ingester.ingest_dump(path, follow_symlinks=follow_symlinks)
        else:
            raise InvalidInput(f"{path}: neither a dump directory nor a .jsonl/.jsonl.gz catalog")
        if any(report.counts[k] for k in ("added", "updated", "missing", "records")):
            # files can appear, move or vanish without any text changing: searchers cache entries and
            # file states per stamp, so count this change too
            from registry.service import bump_stamp

            with self.session(write=True) as session:
                bump_stamp(session)
                session.commit()
        self.reindex(only_if_stale=True)
        return report

    def ingest_total(self, path: str | os.PathLike[str], *, follow_symlinks: bool = False) -> int | None:
        """How many items ``ingest(path)`` goes through, for a progress bar (None: unknown)."""
        path = os.fspath(path)
        if os.path.isfile(path) and path.endswith((".jsonl", ".jsonl.gz")):
            from indexer.catalog_ingest import count_records

            return count_records(path)
        if os.path.isdir(path):
            from indexer.walk import count_items

            return count_items(path, follow_symlinks=follow_symlinks)
        return None

    def reindex(self, only_if_stale: bool = False):
        """Rebuild the FAISS index from the embeddings in SQL (embedding what is missing)."""
        from indexer.faiss_index import is_current, read_manifest
        from indexer.sync import rebuild_index

        with self._lock, self.session() as session:
            embedder = self.embedder()
            if only_if_stale and is_current(read_manifest(self.index_dir), embedder.name, embedder.dim, read_stamp(session)):
                return read_manifest(self.index_dir)
            try:
                manifest = rebuild_index(session, embedder, self.index_dir)
            except OSError as exc:  # full disk, read-only data directory: the previous index stays
                where = exc.filename or self.index_dir
                raise IndexUnavailable(
                    f"cannot write the search index in {self.index_dir} ({where}: {exc.strerror or exc}); "
                    "the registry in SQL is intact and the previous index, if any, is kept"
                ) from exc
            self._searcher = None
            return manifest

    def remove(self, entry_id: int) -> LoraEntry:
        """Remove an entry (a version); its model goes too when it has no version left."""
        from registry.service import bump_stamp

        with self.session(write=True) as session:
            version = session.scalar(version_query().where(Version.id == entry_id))
            if version is None:
                raise NotFound(f"no registry entry with id {entry_id}")
            entry = entry_of(version)
            model = version.model
            session.delete(version)
            session.flush()
            session.refresh(model)
            if not model.versions:
                session.delete(model)
            bump_stamp(session)
            session.commit()
        return entry

    # -- reading ------------------------------------------------------------------------------
    def get(self, entry_id: int) -> LoraEntry:
        with self.session() as session:
            version = session.scalar(version_query().where(Version.id == entry_id))
            if version is None:
                raise NotFound(f"no registry entry with id {entry_id}")
            return entry_of(version)

    def find(self, token: str) -> LoraEntry:
        """Resolve what a user typed: a registry id, a file path or stem, a model name or a trigger word."""
        token = token.strip()
        if token.isascii() and token.isdigit():
            return self.get(int(token))
        with self.session() as session:
            path = os.path.abspath(os.path.expanduser(token))
            for stmt in (
                version_query().join(Version.files).where(LoraFile.path == path),
                version_query().join(Version.files).where(LoraFile.name.in_([token, token + ".safetensors"]), LoraFile.status == "present"),
                version_query().join(Version.model).where(func.lower(LoraModel.name) == token.lower()),
                version_query().join(Version.trigger_words).where(TriggerWord.word_norm == normalize_word(token)),
            ):
                versions = list(session.scalars(stmt.order_by(Version.id)).unique())
                if versions:
                    present = [v for v in versions if entry_of(v).file_path] or versions
                    if len({v.model_id for v in present}) > 1:
                        names = ", ".join(f"{v.id} ({v.model.name})" for v in present[:5])
                        raise Ambiguous(f"{token!r} matches several entries: {names}; use a registry id")
                    return entry_of(max(present, key=lambda v: v.id))
        raise NotFound(f"no registry entry matches {token!r} (id, file, name or trigger word)")

    def list(self, *, base: str | None = None, present_only: bool = False, limit: int = 50, offset: int = 0,
             query: str | None = None, tag: str | None = None, creator: str | None = None,
             format: str | None = None, sort: str = "id") -> list[LoraEntry]:
        """Entries in ``sort`` order (``LIST_ORDERS``: id, or most downloaded / best rated first,
        entries without the stat last); ``query`` is a part of the model name, ``tag``/``creator``
        exact (case-insensitive), ``format`` a file format (registry.formats)."""
        order = list_order(sort)
        with self.session() as session:
            stmt = version_query().join(Version.model)
            if base:
                stmt = stmt.where(Version.base_family == base)
            if present_only:
                stmt = stmt.where(Version.files.any(LoraFile.status == "present"))
            if format:
                stmt = stmt.where(Version.files.any(LoraFile.format == format))
            if tag:
                stmt = stmt.where(LoraModel.tags.any(Tag.name == tag.strip().lower()))
            if creator:
                stmt = stmt.where(func.lower(LoraModel.creator) == creator.strip().lower())
            if query:
                stmt = stmt.where(LoraModel.name.ilike(f"%{query}%"))
            stmt = stmt.order_by(*order)
            return [entry_of(v) for v in session.scalars(stmt.limit(limit).offset(offset))]

    def stats(self) -> dict[str, Any]:
        with self.session() as session:
            count = lambda stmt: session.scalar(stmt) or 0
            families = dict(session.execute(select(Version.base_family, func.count()).group_by(Version.base_family)).all())
            formats = dict(session.execute(select(LoraFile.format, func.count()).where(LoraFile.status == "present").group_by(LoraFile.format)).all())
            statuses = dict(session.execute(select(LoraFile.status, func.count()).group_by(LoraFile.status)).all())
            problems = dict(session.execute(select(ScannedPath.kind, func.count()).group_by(ScannedPath.kind)).all())
            from indexer.faiss_index import read_manifest

            manifest = read_manifest(self.index_dir)
            return {
                "url": make_url(self.url).render_as_string(hide_password=True),
                "models": count(select(func.count(LoraModel.id))),
                "versions": count(select(func.count(Version.id))),
                "files": statuses,
                "formats": {k or "unknown": v for k, v in formats.items()},
                "base_families": families,
                "trigger_words": count(select(func.count(TriggerWord.id))),
                "scanned_paths": problems,
                "index": {
                    "dir": str(self.index_dir),
                    "vectors": manifest.count if manifest else 0,
                    "embed_model": manifest.embed_model if manifest else None,
                    "embedder": manifest.embedder if manifest else None,
                    "current": bool(manifest and manifest.stamp == read_stamp(session)),
                },
                "schema_revision": migrate.current_revision(self.engine),
            }

    def search(self, prompt: str, k: int = 10, base: str | None = None, present_only: bool = False, *,
               tag: str | None = None, creator: str | None = None, format: str | None = None):
        """Hybrid search; returns a list of indexer.search.SearchHit (entry, score, phrase, why).
        A one-word query that is an entry's name (or a word of it), trigger, tag or creator finds it."""
        from indexer.search import Filters

        return self.searcher().search(prompt, k=k, filters=Filters(base, present_only, tag, creator, format))

    def searcher(self):
        """The search engine, with its FAISS index brought up to date with SQL first."""
        from indexer.faiss_index import is_current, load_index
        from indexer.search import Searcher

        with self.session() as session:
            stamp = read_stamp(session)
        embedder = self.embedder()
        if self._searcher is not None and self._searcher.stamp == stamp:
            return self._searcher
        loaded = load_index(self.index_dir)
        if loaded is None or not is_current(loaded[1], embedder.name, embedder.dim, stamp):
            self.reindex()
            loaded = load_index(self.index_dir)
            if loaded is None:
                raise RegistryError(f"cannot write or read the search index in {self.index_dir}")
        index, manifest = loaded
        self._searcher = Searcher(self, index, manifest.stamp)
        return self._searcher


__all__ = ["Registry", "LoraEntry", "clean_name"]
