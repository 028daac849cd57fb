"""Units of work that survive another process writing the same registry.

A batch that collides with a concurrent ingest (a unique key taken, a lock, a deadlock) is rolled
back and redone; it then sees what the other committed. After CONFLICT_RETRIES redos a
still-conflicting item is reported as failed, and one item's error is never the run's.
"""
from __future__ import annotations

import random
import time
from typing import Callable

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from indexer.report import IngestReport
from registry.errors import RegistryError
from registry.service import CatalogWriter
from registry.text import clean_text

CONFLICT_RETRIES = 3
RETRY_DEADLINE_S = 900.0
# Errors from another writer, worth a retry: SQLite busy/locked; PostgreSQL deadlock, serialization
# failure, lock not available.
_TRANSIENT_PGCODES = {"40P01", "40001", "55P03"}


def is_transient(exc: Exception) -> bool:
    """A conflict with another writer (retry), as opposed to a full disk or a read-only database."""
    if isinstance(exc, IntegrityError):
        return True
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in _TRANSIENT_PGCODES:
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database is busy" in text or "deadlock" in text


class Transactions:
    """Runs batches of one ingest as retried transactions, keeping its report consistent.

    ``commit(session)`` commits a batch (the ingester's: it adds the batch's embeddings first);
    ``forget()`` drops what the run remembers of rows a rolled-back batch wrote.
    """

    def __init__(self, session: Session, writer: CatalogWriter, report: IngestReport,
                 commit: Callable[[Session], None], forget: Callable[[], None]) -> None:
        self.session, self.writer, self.report = session, writer, report
        self._commit, self._forget = commit, forget

    def run(self, work: Callable[[int], None]) -> None:
        """Run ``work(attempt)`` and commit it as one transaction; redo it on a conflict. Anything
        else (a full disk, a read-only database) is one clear RegistryError."""
        started = time.monotonic()
        attempt = 0
        while True:
            mark = self.report.mark()
            try:
                work(attempt)
                self._commit(self.session)
                return
            except (IntegrityError, OperationalError) as exc:
                self.session.rollback()
                self.writer.forget()
                self._forget()
                self.report.rollback(mark)
                if not is_transient(exc):
                    raise RegistryError(f"cannot write to the registry: {str(exc.orig).strip()}") from exc
                if time.monotonic() - started > RETRY_DEADLINE_S:
                    raise RegistryError(f"gave up after {attempt + 1} tries against concurrent writers: {str(exc.orig).strip()}") from exc
                attempt += 1
                self.report.counts["retried_batches"] += 1
                time.sleep(min(2.0, 0.02 * 2**attempt) * random.uniform(0.5, 1.5))

    def guard(self, attempt: int, path: str, step: Callable[[], None]) -> None:
        """One item of a batch: a conflict with another writer redoes the batch (until the last
        tries); any other error is that item's failure, never the run's."""
        try:
            step()
        except (IntegrityError, OperationalError) as exc:
            if isinstance(exc, OperationalError) or attempt < CONFLICT_RETRIES:
                raise
            self.writer.forget()
            self.report.add(path, "failed", f"cannot store: {clean_text(str(exc.orig))[:500]}")
        except Exception as exc:  # never let one file stop thousands; its savepoint was rolled back
            self.writer.forget()
            self.report.add(path, "failed", f"internal error: {exc.__class__.__name__}: {clean_text(str(exc))[:500]}")
