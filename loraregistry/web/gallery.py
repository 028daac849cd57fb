"""Compose results on disk: ``ID.png`` (with its A1111 ``parameters`` chunk), ``ID.weights.png`` and
``ID.json`` (the request, the composer's report and the parameters text), in one directory.

The gallery is read back from the directory, so it outlives the server; a later external queue
(issue 17) can share the directory between workers. File names are built from job ids that
match ``JOB_ID``, never from anything else in a request.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
KINDS = {"image": ".png", "weights": ".weights.png"}


class ResultStore:
    """The directory of results; keeps the newest ``keep`` and deletes older ones."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 500) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._lock = threading.Lock()

    def _path(self, job_id: str, suffix: str) -> Path | None:
        if not JOB_ID.match(job_id):
            return None
        return self.directory / f"{job_id}{suffix}"

    def save(self, job_id: str, result: Any, request: dict[str, Any]) -> dict[str, Any]:
        """Write a composer ``Result`` (image, weights map, report) and return its record."""
        path = self._path(job_id, ".json")
        if path is None:
            raise ValueError(f"bad job id {job_id!r}")
        result.save(str(self._path(job_id, KINDS["image"])))
        weights = None
        if result.weights:
            result.save_weights_map(str(self._path(job_id, KINDS["weights"])))
            weights = f"{job_id}{KINDS['weights']}"
        record = {
            "id": job_id,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "request": request,
            "report": result.report,
            "parameters": result.parameters,
            "image": f"{job_id}{KINDS['image']}",
            "weights_map": weights,
            "size": list(result.image.size),
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, default=str, ensure_ascii=False))
        os.replace(tmp, path)  # readers never see half a record
        self._prune()
        return record

    def record(self, job_id: str) -> dict[str, Any] | None:
        path = self._path(job_id, ".json")
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def file(self, job_id: str, kind: str) -> Path | None:
        """The image (``image``) or weights map (``weights``) of a stored result, if it exists."""
        if kind not in KINDS:
            return None
        path = self._path(job_id, KINDS[kind])
        if path is None or path.is_symlink() or not path.is_file():
            return None
        return path

    def _records(self) -> list[Path]:
        found = [p for p in self.directory.glob("*.json") if JOB_ID.match(p.stem)]
        return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)

    def recent(self, limit: int = 24) -> list[dict[str, Any]]:
        out = []
        for path in self._records()[:limit]:
            rec = self.record(path.stem)
            if rec is not None:
                out.append(rec)
        return out

    def _prune(self) -> None:
        with self._lock:
            for path in self._records()[self.keep :]:
                for suffix in (".json", *KINDS.values()):
                    (self.directory / f"{path.stem}{suffix}").unlink(missing_ok=True)
