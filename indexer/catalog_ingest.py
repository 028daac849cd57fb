"""JSON Lines catalogs of Civitai /models records: parsed line by line, written in batches.

A line that cannot be parsed or stored fails alone, with its path and line number; the batch
around it lands.
"""
from __future__ import annotations

import gzip
import io
import json
from typing import Iterator

from sqlalchemy.exc import IntegrityError, OperationalError

from indexer.report import Problem, Progress
from indexer.transactions import CONFLICT_RETRIES, Transactions
from registry.civitai import ModelRecord, NotARecord, parse_model_record
from registry.models import LoraModel
from registry.text import clean_text


def count_records(path: str) -> int | None:
    """Non-empty lines of a catalog, for a progress bar (a cheap second pass; None if unreadable)."""
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as fh:
            return sum(1 for line in fh if line.strip())
    except (OSError, EOFError):
        return None


def catalog_lines(path: str, progress: Progress) -> Iterator[tuple[int, ModelRecord | Problem]]:
    """(line number, parsed record or the Problem with that line), for every non-empty line."""
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
                progress(1, where)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            yield lineno, Problem(path, "failed", f"catalog unreadable after line {lineno}: {exc}")


def write_catalog_batch(tx: Transactions, path: str, batch: list[tuple[int, ModelRecord]], dirty: set[int]) -> None:
    """Store a batch of records in one transaction; the ids of the models it changed go to ``dirty``."""
    records = [rec for _, rec in batch]
    session, writer = tx.session, tx.writer

    def work(attempt: int) -> None:
        writer.prefetch(records)
        try:  # the whole batch in one flush (executemany); record by record only if something breaks
            with session.begin_nested():
                models = [writer.upsert_model(rec, "catalog") for rec in records]
                session.flush()
        except (IntegrityError, OperationalError):
            if attempt < CONFLICT_RETRIES:
                raise  # most likely another ingest took a key first: redo the batch
            models = _one_by_one(tx, path, batch)
        except Exception:
            models = _one_by_one(tx, path, batch)
        dirty.update(m.id for m in models)
        tx.report.counts["records"] += len(models)

    tx.run(work)


def _one_by_one(tx: Transactions, path: str, batch: list[tuple[int, ModelRecord]]) -> list[LoraModel]:
    session, writer = tx.session, tx.writer
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
            tx.report.add(f"{path}:{lineno}", "failed", f"cannot store record: {exc.__class__.__name__}: {clean_text(str(exc))[:500]}")
    return models
