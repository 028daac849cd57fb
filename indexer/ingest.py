"""Ingest a Civitai dump (adapters with sidecars, standalone records) or a JSON Lines catalog.

Incremental and resumable: a file whose size and mtime (and its sidecars') are unchanged is skipped;
work is committed in batches together with its embeddings, so an interrupted ingest keeps what it did.
Bad input never stops the run: each problem is recorded with the path and the reason.

The parts live beside this module: ``report`` (what a run reports), ``transactions`` (retried
batches), ``catalog_ingest`` (JSON Lines catalogs), ``sidecars`` (reading and matching sidecar
records), ``adapter_rows`` (an adapter file's rows); this one walks a dump and drives them.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from indexer.adapter_rows import AdapterFile, Duplicate, store_adapter
from indexer.catalog_ingest import catalog_lines, write_catalog_batch
from indexer.report import IngestReport, Problem, Progress
from indexer.sidecars import match_file, merge_records, read_json
from indexer.store import Store
from indexer.transactions import Transactions
from indexer.walk import AdapterCandidate, walk_dump
from registry.civitai import ModelRecord, NotARecord, parse_any
from registry.errors import InvalidInput
from registry.formats import detect_format
from registry.hashing import sha256_file
from registry.models import LoraFile, LoraModel, ScannedPath
from registry.safetensors_header import read_header
from registry.service import CatalogWriter
from registry.text import clean_text

__all__ = ["Ingester", "IngestReport", "Problem"]


class Ingester:
    """One ingest run against one registry."""

    def __init__(self, registry: Store, *, verify: bool = False, batch_size: int = 200, progress: Progress | None = None) -> None:
        self.registry = registry
        self.verify = verify
        self.batch_size = batch_size
        self.progress = progress or (lambda n, path: None)
        self.report = IngestReport()
        self._dirty_models: set[int] = set()

    def _commit(self, session: Session) -> None:
        """Commit the batch together with the embeddings of the models it changed."""
        session.flush()
        if self._dirty_models:
            from indexer.sync import update_embeddings

            self.report.counts["embedded"] += update_embeddings(session, self.registry.embedder(), self._dirty_models)
            self._dirty_models.clear()
        session.commit()

    def _transactions(self, session: Session) -> Transactions:
        return Transactions(session, CatalogWriter(session), self.report, self._commit, self._dirty_models.clear)

    def _mark_dirty(self, session: Session, model: LoraModel) -> None:
        if model.id is None:
            session.flush()
        self._dirty_models.add(model.id)

    # -- catalogs -------------------------------------------------------------------------
    def _load_embedder(self) -> None:
        # Load the embedding model before the write lock is taken: loading takes seconds (more on a
        # busy machine), and a SQLite writer holds the lock until its batch commits, so another
        # process opening the same registry (two queue workers on one machine) waited on it until
        # its busy timeout and failed with "database is locked".
        self.registry.embedder()

    def ingest_catalog(self, path: str) -> IngestReport:
        start = time.perf_counter()
        self._load_embedder()
        with self.registry.session(write=True) as session:
            tx = self._transactions(session)
            batch: list[tuple[int, ModelRecord]] = []
            for lineno, item in catalog_lines(path, self.progress):
                if isinstance(item, Problem):
                    self.report.add(item.path, item.kind, item.reason)
                    continue
                batch.append((lineno, item))
                if len(batch) >= self.batch_size:
                    write_catalog_batch(tx, path, batch, self._dirty_models)
                    batch = []
            if batch:
                write_catalog_batch(tx, path, batch, self._dirty_models)
        self.report.elapsed_s = time.perf_counter() - start
        return self.report

    # -- dumps ----------------------------------------------------------------------------
    def ingest_dump(self, root: str, follow_symlinks: bool = False) -> IngestReport:
        start = time.perf_counter()
        root = os.path.abspath(root)
        if not os.path.isdir(root):
            raise InvalidInput(f"{root}: not a directory")
        walked = walk_dump(root, follow_symlinks=follow_symlinks)
        for path, kind, reason in walked.problems:
            self.report.add(path, kind, reason)
        self.report.counts["other_files"] = walked.other_files
        items: list[tuple[str, Any]] = [("pickle", p) for p in walked.pickles]
        items += [("record", p) for p in walked.records]
        items += [("adapter", c) for c in walked.adapters]
        seen = {p if kind != "adapter" else p.path for kind, p in items}
        self._load_embedder()
        with self.registry.session(write=True) as session:
            tx = self._transactions(session)
            for i in range(0, len(items), self.batch_size):
                batch = items[i : i + self.batch_size]
                tx.run(lambda attempt: self._dump_batch(tx, batch, attempt))
            prefix = root.rstrip(os.sep) + os.sep
            tx.run(lambda attempt: self._sweep(session, prefix, seen))
        for catalog in walked.catalogs:
            self.ingest_catalog(catalog)
        self.report.elapsed_s = time.perf_counter() - start
        return self.report

    def _dump_batch(self, tx: Transactions, batch: list[tuple[str, Any]], attempt: int) -> None:
        """One batch of a dump, against what SQL holds now (another process may have written since)."""
        session, writer = tx.session, tx.writer
        paths = [item if kind != "adapter" else item.path for kind, item in batch]
        known_files: dict[str, LoraFile] = {}
        scanned: dict[str, ScannedPath] = {}
        for chunk in range(0, len(paths), 500):
            part = paths[chunk : chunk + 500]
            known_files.update((f.path, f) for f in session.scalars(select(LoraFile).where(LoraFile.path.in_(part))))
            scanned.update((r.path, r) for r in session.scalars(select(ScannedPath).where(ScannedPath.path.in_(part))))
        for (kind, item), path in zip(batch, paths):
            if kind == "pickle":
                step = lambda: self._refuse_pickle(session, scanned, item)
            elif kind == "record":
                step = lambda: self._ingest_record(session, writer, scanned, item)
            else:
                step = lambda: self._ingest_adapter(session, writer, known_files, scanned, item)
            tx.guard(attempt, path, step)
            self.progress(1, path)

    def _sweep(self, session: Session, prefix: str, seen: set[str]) -> None:
        """Files under the dump that the walk no longer found: missing; stale scan records: gone."""
        rows = session.execute(
            select(LoraFile.id, LoraFile.path).where(LoraFile.path.startswith(prefix, autoescape=True), LoraFile.status == "present")
        ).all()
        gone = [row_id for row_id, path in rows if path not in seen]
        for chunk in range(0, len(gone), 500):
            session.execute(update(LoraFile).where(LoraFile.id.in_(gone[chunk : chunk + 500])).values(status="missing"))
        self.report.counts["missing"] += len(gone)
        for row in session.scalars(select(ScannedPath).where(ScannedPath.path.startswith(prefix, autoescape=True))):
            if row.path not in seen:
                session.delete(row)

    def _stat(self, path: str, sidecars: Iterable[str] = ()) -> tuple[int, int]:
        st = os.stat(path)
        mtime = st.st_mtime_ns
        for sidecar in sidecars:
            try:
                mtime = max(mtime, os.stat(sidecar).st_mtime_ns)
            except OSError:
                pass
        return st.st_size, mtime

    def _remember(self, session: Session, scanned: dict[str, ScannedPath], path: str, kind: str, reason: str | None, size: int | None, mtime: int | None) -> None:
        reason = clean_text(reason)[:4000] if reason is not None else None
        row = scanned.get(path)
        if row is None:
            row = ScannedPath(path=path, kind=kind)
            session.add(row)
            scanned[path] = row
        row.kind, row.reason, row.size_bytes, row.mtime_ns = kind, reason, size, mtime
        if kind in ("refused", "failed", "duplicate"):
            self.report.add(path, kind, reason or "")

    def _unchanged_problem(self, scanned: dict[str, ScannedPath], path: str, size: int, mtime: int) -> bool:
        row = scanned.get(path)
        if row is not None and row.size_bytes == size and row.mtime_ns == mtime:
            if row.kind in ("refused", "failed", "duplicate"):
                self.report.add(path, row.kind, row.reason or "")
            else:
                self.report.counts["unchanged"] += 1
            return True
        return False

    def _changed(self, scanned: dict[str, ScannedPath], path: str) -> tuple[int, int] | None:
        """(size, mtime) of a path to (re)read, or None when it cannot be read or was seen unchanged."""
        try:
            size, mtime = self._stat(path)
        except OSError as exc:
            self.report.add(path, "failed", f"cannot stat: {exc.strerror}")
            return None
        if self._unchanged_problem(scanned, path, size, mtime):
            return None
        return size, mtime

    def _refuse_pickle(self, session: Session, scanned: dict[str, ScannedPath], path: str) -> None:
        if (stat := self._changed(scanned, path)) is None:
            return
        size, mtime = stat
        ext = os.path.splitext(path)[1]
        self._remember(session, scanned, path, "refused", f"pickle-based {ext} file: never unpickled (convert it to .safetensors)", size, mtime)

    def _ingest_record(self, session: Session, writer: CatalogWriter, scanned: dict[str, ScannedPath], path: str) -> None:
        if (stat := self._changed(scanned, path)) is None:
            return
        size, mtime = stat
        try:
            data = read_json(path)
            kind, record = parse_any(data, os.path.splitext(os.path.basename(path))[0])
        except InvalidInput as exc:
            self._remember(session, scanned, path, "failed", str(exc).removeprefix(f"{path}: "), size, mtime)
            return
        except NotARecord as exc:
            self._remember(session, scanned, path, "ignored", str(exc), size, mtime)
            self.report.counts["ignored"] += 1
            return
        except OSError as exc:
            self._remember(session, scanned, path, "failed", f"unreadable: {exc.strerror}", size, mtime)
            return
        except Exception as exc:  # a field no parser foresaw
            self._remember(session, scanned, path, "failed", f"cannot be parsed: {exc.__class__.__name__}: {exc}", size, mtime)
            return
        if kind == "a1111-card":  # a card with no adapter beside it describes nothing we can find
            self._remember(session, scanned, path, "ignored", "A1111 card without a .safetensors beside it", size, mtime)
            self.report.counts["ignored"] += 1
            return
        with session.begin_nested():
            writer.prefetch([record])
            model = writer.upsert_model(record, "catalog")
            session.flush()
        self._dirty_models.add(model.id)
        self._remember(session, scanned, path, "record", kind, size, mtime)
        self.report.counts["records"] += 1

    def _ingest_adapter(self, session: Session, writer: CatalogWriter, known_files: dict[str, LoraFile], scanned: dict[str, ScannedPath], candidate: AdapterCandidate) -> None:
        path = candidate.path
        try:  # a preview added or replaced counts as a change, like a sidecar
            size, mtime = self._stat(path, [*candidate.sidecars, *([candidate.preview] if candidate.preview else [])])
        except OSError as exc:
            self.report.add(path, "failed", f"cannot stat: {exc.strerror}")
            return
        known = known_files.get(path)
        if known is None and session.bind.dialect.name != "sqlite":
            # Another process may have committed this path since the batch began (PostgreSQL reads
            # committed rows statement by statement; a SQLite writer holds the lock all along).
            known = session.scalar(select(LoraFile).where(LoraFile.path == path))
            if known is not None:
                known_files[path] = known
        if known is not None and known.size_bytes == size and known.mtime_ns == mtime and known.status == "present" and not self.verify:
            if known.preview_path != candidate.preview:  # a preview removed leaves the newest mtime as it was
                known.preview_path = candidate.preview
            self.report.counts["unchanged"] += 1
            return
        if known is None and self._unchanged_problem(scanned, path, size, mtime):
            return
        try:
            header = read_header(path)
        except InvalidInput as exc:
            self._drop_known(session, known_files, known)
            self._remember(session, scanned, path, "failed", str(exc).removeprefix(f"{path}: "), size, mtime)
            return
        except OSError as exc:
            self._remember(session, scanned, path, "failed", f"unreadable: {exc.strerror}", size, mtime)
            return
        info = detect_format(header)
        if not info.usable:
            self._drop_known(session, known_files, known)
            family = f" (base family from shapes: {info.base_family})" if info.base_family else ""
            self._remember(session, scanned, path, "refused", f"{info.reason}{family}", size, mtime)
            return

        records: list[tuple[str, ModelRecord]] = []
        fallback = os.path.splitext(os.path.basename(path))[0]
        for sidecar in candidate.sidecars:
            try:
                records.append(parse_any(read_json(sidecar), fallback))
                self.report.counts["sidecars"] += 1
            except InvalidInput as exc:
                self.report.add(sidecar, "failed", f"sidecar: {str(exc).removeprefix(sidecar + ': ')}")
            except NotARecord as exc:
                self.report.warn(sidecar, f"not a known sidecar: {exc}")
            except OSError as exc:
                self.report.add(sidecar, "failed", f"sidecar unreadable: {exc.strerror}")
            except Exception as exc:  # a field no parser foresaw: the sidecar fails, the file still lands
                self.report.add(sidecar, "failed", f"sidecar cannot be parsed: {exc.__class__.__name__}: {clean_text(str(exc))[:300]}")
        record = merge_records(records)

        sha256: str | None = None
        verified = False
        match = match_file(record, path, size, None) if record else None
        if match is None and record is not None and sum(len(v.files) for v in record.versions) > 1:
            sha256, verified = sha256_file(path), True
            match = match_file(record, path, size, sha256)
        claimed = match[1].sha256 if match else None
        if claimed and not self.verify:
            sha256 = claimed
        elif not verified:
            sha256, verified = sha256_file(path), True
            if claimed and claimed != sha256:
                self.report.warn(path, f"SHA256 differs from the sidecar's ({claimed[:12]}… vs {sha256[:12]}…): the file was re-saved or is not the published one")
                match = None

        facts = AdapterFile(path, size, mtime, sha256, verified, header, info, candidate.preview)
        try:
            row, already = store_adapter(session, writer, known_files, known, record, match, facts, self.report.warn)
        except Duplicate as dup:  # the savepoint is rolled back: nothing of this file lands
            writer.forget()
            self._remember(session, scanned, path, "duplicate", str(dup), size, mtime)
            return
        scanned_row = scanned.pop(path, None)
        if scanned_row is not None:
            session.delete(scanned_row)
        known_files[path] = row
        self._mark_dirty(session, row.version.model)
        self.report.counts["updated" if known is not None else "unchanged" if already else "added"] += 1

    def _drop_known(self, session: Session, known_files: dict[str, LoraFile], known: LoraFile | None) -> None:
        """A file that was good and is now broken stops being loadable."""
        if known is not None:
            known.status = "missing"
            known_files.pop(known.path, None)
