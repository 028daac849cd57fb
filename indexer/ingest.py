"""Ingest a Civitai dump (adapters with sidecars, standalone records) or a JSON Lines catalog.

Incremental and resumable: a file whose size and mtime (and its sidecars') are unchanged is skipped;
work is committed in batches together with its embeddings, so an interrupted ingest keeps what it did.
Bad input never stops the run: each problem is recorded with the path and the reason.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from indexer.walk import AdapterCandidate, walk_dump
from registry.civitai import FileRecord, ModelRecord, NotARecord, VersionRecord, parse_any, parse_model_record
from registry.errors import InvalidInput, RegistryError
from registry.formats import FormatInfo, detect_format
from registry.models import LoraFile, LoraModel, ScannedPath, Version
from registry.safetensors_header import SafetensorsHeader, read_header
from registry.service import CatalogWriter, set_trigger_words
from registry.text import clean_text

MAX_SIDECAR_BYTES = 32 * 1024 * 1024
MAX_METADATA_VALUE = 64 * 1024
HASH_CHUNK = 4 * 1024 * 1024
# A batch that collides with a concurrent ingest (a unique key taken, a lock, a deadlock) is rolled
# back and redone; after CONFLICT_RETRIES redos a still-conflicting item is reported as failed.
CONFLICT_RETRIES = 3
RETRY_DEADLINE_S = 900.0
# Errors from another writer, worth a retry: SQLite busy/locked; PostgreSQL deadlock, serialization
# failure, lock not available.
_TRANSIENT_PGCODES = {"40P01", "40001", "55P03"}

Progress = Callable[[int, str], None]  # (items done since last call, current path)


@dataclass
class Problem:
    path: str
    kind: str  # refused | failed | duplicate | warning
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "reason": self.reason}


@dataclass
class IngestReport:
    counts: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def failed(self) -> bool:
        return any(p.kind == "failed" for p in self.problems)

    def add(self, path: str, kind: str, reason: str) -> None:
        self.problems.append(Problem(path, kind, reason))
        self.counts[kind] += 1

    def warn(self, path: str, reason: str) -> None:
        self.warnings.append(Problem(path, "warning", reason))

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
            "elapsed_s": round(self.elapsed_s, 3),
            "ok": not self.failed,
        }


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _clean_metadata(metadata: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, value in metadata.items():
        if len(value) > MAX_METADATA_VALUE:  # thumbnails, huge tag-frequency tables
            value = f"<omitted: {len(value)} characters>"
        out[clean_text(key)[:1024]] = clean_text(value)
    return out


def _transient(exc: Exception) -> bool:
    """A conflict with another writer (retry), as opposed to a full disk or a read-only database."""
    if isinstance(exc, IntegrityError):
        return True
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in _TRANSIENT_PGCODES:
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database is busy" in text or "deadlock" in text


def _read_json(path: str) -> Any:
    size = os.path.getsize(path)
    if size > MAX_SIDECAR_BYTES:
        raise InvalidInput(f"{path}: {size} bytes is too large for a metadata sidecar")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise InvalidInput(f"{path}: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: broken JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _merge_records(records: list[tuple[str, ModelRecord]]) -> ModelRecord | None:
    """Civitai records lead; an A1111 card or Lora-Manager file only fills in what they lack."""
    if not records:
        return None
    order = {"civitai-model": 0, "civitai-version": 1, "lora-manager": 2, "cm-info": 3, "a1111-card": 4}
    records = sorted(records, key=lambda kr: order.get(kr[0], 9))
    main = records[0][1]
    for _kind, extra in records[1:]:
        if not main.description and extra.description:
            main.description = extra.description
        if not main.tags and extra.tags:
            main.tags = extra.tags
        if main.civitai_id is None and extra.civitai_id is not None:
            main.civitai_id = extra.civitai_id
        if extra.versions and main.versions:
            target, source = main.versions[0], extra.versions[0]
            for word in source.trained_words:
                if word not in target.trained_words:
                    target.trained_words.append(word)
            if not target.base_model:
                target.base_model = source.base_model
            for frec in source.files:
                if frec.sha256 and not any(f.sha256 == frec.sha256 for v in main.versions for f in v.files):
                    target.files.append(frec)
    return main


def _match_file(record: ModelRecord, path: str, size: int, sha256: str | None) -> tuple[VersionRecord, FileRecord] | None:
    """Which of the record's files is this one: by hash, then name, then size, then the only model file."""
    pairs = [(v, f) for v in record.versions for f in v.files]
    name = os.path.basename(path).lower()
    for test in (
        lambda f: sha256 is not None and f.sha256 == sha256,
        lambda f: f.name.lower() == name,
        lambda f: f.size_bytes is not None and abs(f.size_bytes - size) < 1024 and f.kind in (None, "Model"),
    ):
        found = [(v, f) for v, f in pairs if test(f)]
        if len(found) == 1 or (found and sha256):  # with the bytes hashed, the first match is exact
            return found[0]
    model_files = [(v, f) for v, f in pairs if f.kind in (None, "Model")]
    if len(model_files) == 1:
        return model_files[0]
    return None


class _Duplicate(Exception):
    pass


class Ingester:
    """One ingest run against one registry. ``registry`` is a registry.api.Registry."""

    def __init__(self, registry: Any, *, verify: bool = False, batch_size: int = 200, progress: Progress | None = None) -> None:
        self.registry = registry
        self.verify = verify
        self.batch_size = batch_size
        self.progress = progress or (lambda n, path: None)
        self.report = IngestReport()
        self._dirty_models: set[int] = set()

    # -- units of work --------------------------------------------------------------------
    def _commit(self, session: Session) -> None:
        """Commit the batch together with the embeddings of the models it changed."""
        session.flush()
        if self._dirty_models:
            from indexer.sync import update_embeddings

            self.report.counts["embedded"] += update_embeddings(session, self.registry.embedder(), self._dirty_models)
            self._dirty_models.clear()
        session.commit()

    def _transact(self, session: Session, writer: CatalogWriter, work: Callable[[int], None]) -> None:
        """Run ``work(attempt)`` and commit it as one transaction. When it collides with another
        process writing the same registry (a unique key it just took, a lock, a deadlock), roll
        back and redo it: ``work`` then sees what the other committed. Anything else (a full disk,
        a read-only database) is one clear RegistryError."""
        started = time.monotonic()
        attempt = 0
        while True:
            problems, warnings, counts = len(self.report.problems), len(self.report.warnings), Counter(self.report.counts)
            try:
                work(attempt)
                self._commit(session)
                return
            except (IntegrityError, OperationalError) as exc:
                session.rollback()
                writer.forget()
                self._dirty_models.clear()
                del self.report.problems[problems:], self.report.warnings[warnings:]
                self.report.counts = counts
                if not _transient(exc):
                    raise RegistryError(f"cannot write to the registry: {str(exc.orig).strip()}") from exc
                if time.monotonic() - started > RETRY_DEADLINE_S:
                    raise RegistryError(f"gave up after {attempt + 1} tries against concurrent writers: {str(exc.orig).strip()}") from exc
                attempt += 1
                self.report.counts["retried_batches"] += 1
                time.sleep(min(2.0, 0.02 * 2**attempt) * random.uniform(0.5, 1.5))

    def _guard(self, writer: CatalogWriter, attempt: int, path: str, step: Callable[[], None]) -> None:
        """One item of a batch: a conflict with another writer redoes the batch (until the last
        tries); any other error is that item's failure, never the run's."""
        try:
            step()
        except (IntegrityError, OperationalError) as exc:
            if isinstance(exc, OperationalError) or attempt < CONFLICT_RETRIES:
                raise
            writer.forget()
            self.report.add(path, "failed", f"cannot store: {clean_text(str(exc.orig))[:500]}")
        except Exception as exc:  # never let one file stop thousands; its savepoint was rolled back
            writer.forget()
            self.report.add(path, "failed", f"internal error: {exc.__class__.__name__}: {clean_text(str(exc))[:500]}")

    def _mark_dirty(self, session: Session, model: LoraModel) -> None:
        if model.id is None:
            session.flush()
        self._dirty_models.add(model.id)

    # -- catalogs -------------------------------------------------------------------------
    def ingest_catalog(self, path: str) -> IngestReport:
        start = time.perf_counter()
        with self.registry.session(write=True) as session:
            writer = CatalogWriter(session)
            batch: list[tuple[int, ModelRecord]] = []
            for lineno, item in self._catalog_lines(path):
                if isinstance(item, Problem):
                    self.report.add(item.path, item.kind, item.reason)
                    continue
                batch.append((lineno, item))
                if len(batch) >= self.batch_size:
                    self._write_catalog_batch(session, writer, path, batch)
                    batch = []
            if batch:
                self._write_catalog_batch(session, writer, path, batch)
        self.report.elapsed_s = time.perf_counter() - start
        return self.report

    def _catalog_lines(self, path: str) -> Iterator[tuple[int, ModelRecord | Problem]]:
        try:
            raw = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
        except OSError as exc:
            yield 0, Problem(path, "failed", f"cannot open catalog: {exc.strerror}")
            return
        with raw, io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as text:
            lineno = 0
            try:
                for lineno, line in enumerate(text, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{lineno}"
                    try:
                        data = json.loads(line)
                        if not isinstance(data, dict):
                            raise NotARecord("line is not a JSON object")
                        yield lineno, parse_model_record(data)
                    except (json.JSONDecodeError, RecursionError) as exc:
                        yield lineno, Problem(where, "failed", f"broken JSON line ({exc.__class__.__name__})")
                    except NotARecord as exc:
                        yield lineno, Problem(where, "failed", clean_text(str(exc)))
                    except Exception as exc:  # a field no parser foresaw: this line fails, not the catalog
                        yield lineno, Problem(where, "failed", f"cannot be parsed: {exc.__class__.__name__}: {clean_text(str(exc))[:300]}")
                    self.progress(1, where)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                yield lineno, Problem(path, "failed", f"catalog unreadable after line {lineno}: {exc}")

    def _write_catalog_batch(self, session: Session, writer: CatalogWriter, path: str, batch: list[tuple[int, ModelRecord]]) -> None:
        records = [rec for _, rec in batch]

        def work(attempt: int) -> None:
            writer.prefetch(records)
            try:  # the whole batch in one flush (executemany); record by record only if something breaks
                with session.begin_nested():
                    models = [writer.upsert_model(rec, "catalog") for rec in records]
                    session.flush()
            except (IntegrityError, OperationalError):
                if attempt < CONFLICT_RETRIES:
                    raise  # most likely another ingest took a key first: redo the batch
                models = self._catalog_records_one_by_one(session, writer, path, batch)
            except Exception:
                models = self._catalog_records_one_by_one(session, writer, path, batch)
            self._dirty_models.update(m.id for m in models)
            self.report.counts["records"] += len(models)

        self._transact(session, writer, work)

    def _catalog_records_one_by_one(self, session: Session, writer: CatalogWriter, path: str, batch: list[tuple[int, ModelRecord]]) -> list[LoraModel]:
        writer.forget()
        writer.prefetch([rec for _, rec in batch])
        models = []
        for lineno, rec in batch:
            try:
                with session.begin_nested():
                    models.append(writer.upsert_model(rec, "catalog"))
                    session.flush()
            except Exception as exc:  # one bad record must not lose the batch
                writer.forget()
                self.report.add(f"{path}:{lineno}", "failed", f"cannot store record: {exc.__class__.__name__}: {clean_text(str(exc))[:500]}")
        return models

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
        with self.registry.session(write=True) as session:
            writer = CatalogWriter(session)
            for i in range(0, len(items), self.batch_size):
                batch = items[i : i + self.batch_size]
                self._transact(session, writer, lambda attempt: self._dump_batch(session, writer, batch, attempt))
            prefix = root.rstrip(os.sep) + os.sep
            self._transact(session, writer, lambda attempt: self._sweep(session, prefix, seen))
        for catalog in walked.catalogs:
            self.ingest_catalog(catalog)
        self.report.elapsed_s = time.perf_counter() - start
        return self.report

    def _dump_batch(self, session: Session, writer: CatalogWriter, batch: list[tuple[str, Any]], attempt: int) -> None:
        """One batch of a dump, against what SQL holds now (another process may have written since)."""
        paths = [item if kind != "adapter" else item.path for kind, item in batch]
        known_files: dict[str, LoraFile] = {}
        scanned: dict[str, ScannedPath] = {}
        for chunk in range(0, len(paths), 500):
            part = paths[chunk : chunk + 500]
            known_files.update((f.path, f) for f in session.scalars(select(LoraFile).where(LoraFile.path.in_(part))))
            scanned.update((r.path, r) for r in session.scalars(select(ScannedPath).where(ScannedPath.path.in_(part))))
        for (kind, item), path in zip(batch, paths):
            if kind == "pickle":
                step = lambda: self._refuse_pickle(session, scanned, item)  # noqa: E731
            elif kind == "record":
                step = lambda: self._ingest_record(session, writer, scanned, item)  # noqa: E731
            else:
                step = lambda: self._ingest_adapter(session, writer, known_files, scanned, item)  # noqa: E731
            self._guard(writer, attempt, path, step)
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

    def total_items(self, root: str) -> int:
        walked = walk_dump(root)
        return len(walked.adapters) + len(walked.pickles) + len(walked.records)

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
            data = _read_json(path)
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
                records.append(parse_any(_read_json(sidecar), fallback))
                self.report.counts["sidecars"] += 1
            except InvalidInput as exc:
                self.report.add(sidecar, "failed", f"sidecar: {str(exc).removeprefix(sidecar + ': ')}")
            except NotARecord as exc:
                self.report.warn(sidecar, f"not a known sidecar: {exc}")
            except OSError as exc:
                self.report.add(sidecar, "failed", f"sidecar unreadable: {exc.strerror}")
            except Exception as exc:  # a field no parser foresaw: the sidecar fails, the file still lands
                self.report.add(sidecar, "failed", f"sidecar cannot be parsed: {exc.__class__.__name__}: {clean_text(str(exc))[:300]}")
        record = _merge_records(records)

        sha256: str | None = None
        verified = False
        match = _match_file(record, path, size, None) if record else None
        if match is None and record is not None and sum(len(v.files) for v in record.versions) > 1:
            sha256, verified = sha256_file(path), True
            match = _match_file(record, path, size, sha256)
        claimed = match[1].sha256 if match else None
        if claimed and not self.verify:
            sha256 = claimed
        elif not verified:
            sha256, verified = sha256_file(path), True
            if claimed and claimed != sha256:
                self.report.warn(path, f"SHA256 differs from the sidecar's ({claimed[:12]}… vs {sha256[:12]}…): the file was re-saved or is not the published one")
                match = None

        try:
            row, already = self._store_adapter(session, writer, known_files, known, record, match, path, size, mtime, sha256, verified, header, info, candidate.preview)
        except _Duplicate as dup:  # the savepoint is rolled back: nothing of this file lands
            writer.forget()
            self._remember(session, scanned, path, "duplicate", str(dup), size, mtime)
            return
        scanned_row = scanned.pop(path, None)
        if scanned_row is not None:
            session.delete(scanned_row)
        known_files[path] = row
        self._mark_dirty(session, row.version.model)
        self.report.counts["updated" if known is not None else "unchanged" if already else "added"] += 1

    def _store_adapter(self, session: Session, writer: CatalogWriter, known_files: dict[str, LoraFile], known: LoraFile | None, record: ModelRecord | None, match: tuple[VersionRecord, FileRecord] | None, path: str, size: int, mtime: int, sha256: str | None, verified: bool, header: SafetensorsHeader, info: FormatInfo, preview: str | None = None) -> tuple[LoraFile, bool]:
        """The file's row, and whether SQL already held it unchanged at this path."""
        with session.begin_nested():
            row, version = known, None
            if record is not None:
                writer.prefetch([record])
                model = writer.upsert_model(record, "sidecar")
                if match is not None:
                    version = writer._find_version(model, match[0])
                    if row is None:
                        row = writer.upsert_catalog_file(version, match[1], "sidecar")
                elif model.versions:
                    version = model.versions[0]
                else:
                    version = Version(base_family="other", base_family_source="sidecar", source="sidecar")
                    model.versions.append(version)
            if row is None:
                row = self._match_catalog(session, sha256, os.path.basename(path))
            if row is not None and row.path is not None and row.path != path:
                if os.path.exists(row.path) and row.status == "present":
                    raise _Duplicate(f"same file as {row.path} (SHA256 {(sha256 or '')[:12]}…)")
                known_files.pop(row.path, None)  # the file moved: adopt the new path
            if row is None:
                if version is not None:
                    row = LoraFile(name=os.path.basename(path), status="present", source="header")
                    version.files.append(row)
                else:
                    row = self._synthesize(session, header, info, path)
            if known is None and (other := self._sha_taken(session, sha256, row, path)):
                raise _Duplicate(f"same SHA256 as {other}")
            # A row that already holds this path and these bytes was stored by another process
            # after this batch looked (PostgreSQL reads committed rows statement by statement).
            already = row.path == path and (row.size_bytes, row.mtime_ns, row.status) == (size, mtime, "present")
            self._fill_file(row, path, size, mtime, sha256, verified, header, info)
            row.preview_path = preview
            version = row.version
            self._apply_family(version, info, path)
            session.flush()
        return row, already

    def _drop_known(self, session: Session, known_files: dict[str, LoraFile], known: LoraFile | None) -> None:
        """A file that was good and is now broken stops being loadable."""
        if known is not None:
            known.status = "missing"
            known_files.pop(known.path, None)

    def _sha_taken(self, session: Session, sha256: str | None, row: LoraFile, path: str) -> str | None:
        """Another present file with these bytes. The same path is no duplicate: a concurrent ingest
        stored it a moment ago, and the unique path makes this batch retry against its row."""
        if not sha256:
            return None
        other = session.scalar(
            select(LoraFile.path).where(
                LoraFile.sha256 == sha256, LoraFile.status == "present", LoraFile.id != row.id, LoraFile.path != path
            )
        )
        if other and os.path.exists(other):
            return other
        return None

    def _match_catalog(self, session: Session, sha256: str | None, name: str) -> LoraFile | None:
        """A catalog-only record of this very file: by SHA256, then AutoV2, then a unique file name."""
        if sha256:
            row = session.scalars(select(LoraFile).where(LoraFile.sha256 == sha256).order_by(LoraFile.path.is_not(None), LoraFile.id)).first()
            if row is not None:
                return row
            row = session.scalars(select(LoraFile).where(LoraFile.autov2 == sha256[:10], LoraFile.path.is_(None)).order_by(LoraFile.id)).first()
            if row is not None:
                return row
        rows = session.scalars(select(LoraFile).where(LoraFile.name == name, LoraFile.path.is_(None)).limit(2)).all()
        return rows[0] if len(rows) == 1 else None

    def _synthesize(self, session: Session, header: SafetensorsHeader, info: FormatInfo, path: str) -> LoraFile:
        """A local file no record describes: a model of its own, named from its metadata or file name."""
        meta = header.metadata
        name = meta.get("ss_output_name") or meta.get("modelspec.title") or os.path.splitext(os.path.basename(path))[0]
        family = info.base_family or "other"
        model = LoraModel(name=name[:512], source="header", description=meta.get("modelspec.description") or None)
        version = Version(name=None, base_model=None, base_family=family, base_family_source="header", source="header")
        row = LoraFile(name=os.path.basename(path), status="present", source="header")
        version.files.append(row)
        model.versions.append(version)
        session.add(model)
        trigger = meta.get("modelspec.trigger_phrase")
        if trigger:
            set_trigger_words(version, [trigger], "header")
        return row

    def _fill_file(self, row: LoraFile, path: str, size: int, mtime: int, sha256: str | None, verified: bool, header: SafetensorsHeader, info: FormatInfo) -> None:
        row.path = path
        row.status = "present"
        row.size_bytes = size
        row.mtime_ns = mtime
        if sha256 and (verified or not row.sha256_verified):
            row.sha256 = sha256
            row.autov2 = sha256[:10]
            row.sha256_verified = verified
        row.format = info.format
        row.detected_family = info.base_family
        row.rank = info.rank
        row.alpha = info.alpha
        row.unet_modules = info.unet_modules
        row.te_modules = info.te_modules
        row.header_metadata = _clean_metadata(header.metadata) or None
        if row.kind is None:
            row.kind = "Model"

    def _apply_family(self, version: Version, info: FormatInfo, path: str) -> None:
        for note in info.notes:
            self.report.warn(path, note)
        if info.base_family is None or not info.family_evidence.startswith(("shapes", "names")):
            return
        if version.base_family != info.base_family and version.base_family_source != "header":
            if version.base_model:
                self.report.warn(path, f"Civitai says {version.base_model!r}, tensor shapes say {info.base_family}: shapes win")
        version.base_family = info.base_family
        version.base_family_source = "header"
