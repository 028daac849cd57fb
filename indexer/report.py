"""What an ingest run reports: counts, problems by path and reason, warnings."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

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

    def mark(self) -> tuple[int, int, Counter]:
        """Where the report stands, to roll back to when a transaction is redone."""
        return len(self.problems), len(self.warnings), Counter(self.counts)

    def rollback(self, mark: tuple[int, int, Counter]) -> None:
        problems, warnings, counts = mark
        del self.problems[problems:], self.warnings[warnings:]
        self.counts = counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
            "elapsed_s": round(self.elapsed_s, 3),
            "ok": not self.failed,
        }
