"""Candidates for a prompt: from the registry's hybrid search, or from a pool the user names.

Retrieval keeps entries of the pipeline's base family with a local file, one version per model
(the registry's search already returns one version per model, the newest present one). Requests
that cannot succeed fail here, before any LoRA is read: an empty registry, no candidate of the
pipeline's family, pool items that are neither files nor registry entries.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from composer.loras import LoraRef, parse_lora_token


class SelectionError(ValueError):
    """A retrieve/probe/compose request that cannot be served; the message says why."""


@dataclass
class Candidate:
    """A LoRA that may join the composition, with everything decided about it."""

    path: str
    name: str
    weight: float = 1.0
    registry_id: int | None = None
    base_family: str | None = None
    trigger_words: tuple[str, ...] = ()
    retrieval_score: float | None = None
    phrase: str | None = None
    match: str | None = None
    probe: dict[str, float] | None = None
    combined: float | None = None
    kept: bool | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def ref(self) -> LoraRef:
        """By registry id when it has one (the loaded LoRA then carries the registry's name and id)."""
        return LoraRef(str(self.registry_id) if self.registry_id is not None else self.path, self.weight, self.phrase)

    def report(self) -> dict[str, Any]:
        r = lambda x: None if x is None else round(float(x), 4)
        return {
            "registry_id": self.registry_id, "name": self.name, "path": self.path, "weight": self.weight,
            "base_family": self.base_family, "trigger_words": list(self.trigger_words),
            "retrieval_score": r(self.retrieval_score), "phrase": self.phrase, "match": self.match,
            "probe": None if self.probe is None else {k: r(v) for k, v in self.probe.items()},
            "combined": r(self.combined), "kept": self.kept, "reason": self.reason,
        }


def header_family(path: str) -> str | None:
    """A file's base family from its safetensors header alone (names and shapes: nothing is loaded)."""
    from registry.formats import detect_format
    from registry.safetensors_header import read_header

    try:
        return detect_format(read_header(path)).base_family
    except Exception:
        return None


def _registry_size(registry) -> int:
    from sqlalchemy import func, select

    from registry.models import Version

    with registry.session() as session:
        return session.scalar(select(func.count(Version.id))) or 0


def retrieve(registry, prompt: str, family: str, k: int = 16) -> tuple[list[Candidate], dict[str, Any]]:
    """Top ``k`` registry entries for ``prompt`` of base family ``family`` with a local file.

    Returns the candidates (best first) and a report: family, counts, seconds.
    Raises SelectionError for an empty registry or when no entry of ``family`` with a file matches.
    """
    if k < 1:
        raise SelectionError(f"the number of candidates must be >= 1, got {k}")
    if not prompt or not prompt.strip():
        raise SelectionError("an empty prompt retrieves nothing")
    if _registry_size(registry) == 0:
        raise SelectionError(f"the registry {registry.url} is empty: ingest LoRAs first (loraregistry ingest DIR)")
    t0 = time.perf_counter()
    hits = registry.search(prompt, k=k, base=family, present_only=True)
    seconds = time.perf_counter() - t0
    if not hits:
        others = registry.search(prompt, k=k)
        if not others:
            raise SelectionError(f"no registry entry matches {prompt!r}")
        fams = Counter(h.entry.base_family for h in others)
        same = fams.get(family, 0)
        detail = ", ".join(f"{f}: {n}" for f, n in fams.most_common())
        if same:
            raise SelectionError(f"{same} matching {family} entries have no local file to load (matches by family: {detail})")
        raise SelectionError(f"no candidate of the pipeline's family {family!r} matches the prompt (matches by family: {detail})")
    out = []
    for h in hits:
        e = h.entry
        out.append(Candidate(path=e.file_path, name=e.name, registry_id=e.id, base_family=e.base_family,
                             trigger_words=tuple(e.trigger_words), retrieval_score=float(h.score),
                             phrase=h.phrase, match=h.match))
    return out, {"family": family, "requested": k, "found": len(out), "seconds": round(seconds, 4)}


def resolve_pool(registry, pool: Sequence[str | LoraRef], family: str | None = None) -> list[Candidate]:
    """Candidates from user-given items: file paths or registry ids/names/trigger words, with an
    optional ``:WEIGHT``. Raises SelectionError naming every item that does not resolve or, when
    ``family`` is given, whose header shows another base family (before any tensor is read)."""
    if not pool:
        raise SelectionError("the pool is empty")
    out, bad, seen = [], [], set()
    for item in pool:
        ref = item if isinstance(item, LoraRef) else parse_lora_token(str(item))
        if os.path.isfile(ref.token):
            cand = Candidate(path=ref.token, name=os.path.splitext(os.path.basename(ref.token))[0], weight=ref.weight,
                             base_family=header_family(ref.token))
        else:
            if registry is None:
                bad.append(f"{ref.token!r} (not a file, and no registry to look it up)")
                continue
            try:
                e = registry.find(ref.token)
            except Exception as exc:
                bad.append(f"{ref.token!r} ({exc})")
                continue
            if not e.file_path or not os.path.isfile(e.file_path):
                bad.append(f"{ref.token!r} (registry entry {e.id} {e.name!r} has no local file)")
                continue
            cand = Candidate(path=e.file_path, name=e.name, weight=ref.weight, registry_id=e.id,
                             base_family=e.base_family, trigger_words=tuple(e.trigger_words))
        if family is not None and cand.base_family not in (None, family):
            bad.append(f"{ref.token!r} (a {cand.base_family} LoRA; the pipeline's family is {family})")
            continue
        key = os.path.realpath(cand.path)
        if key in seen:
            bad.append(f"{ref.token!r} (the same file twice in the pool)")
            continue
        seen.add(key)
        out.append(cand)
    if bad:
        raise SelectionError("pool items that cannot be used: " + "; ".join(bad))
    return out
