"""What the library and detail pages read: filtered, counted listings, one entry with its files and
versions, the filters' choices, and the preview images the registry knows.

Listing with filters and a total lives here rather than in ``Registry.list`` (which has no count
and fewer filters); it reads through ``Registry.session`` and builds the same ``LoraEntry`` objects,
so the API's entries are exactly what ``loraregistry list --json`` prints.
"""
from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from registry.errors import NotFound
from registry.models import LoraFile, LoraModel, Tag, Version, model_tags
from registry.service import LoraEntry, entries_by_id, entry_of, version_query

FAMILIES = ("sd1", "sd2", "sdxl", "flux", "other")
SEARCH_DEPTH = 200  # most search hits a filtered or paged search looks at
MAX_PREVIEW_BYTES = 32 * 1024 * 1024
# Served only when the bytes say they are an image; the media type comes from them, not the name.
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


@dataclass(frozen=True)
class Filters:
    """The library's filters; all optional, combined with AND."""

    base: str | None = None
    format: str | None = None
    tag: str | None = None
    creator: str | None = None
    present: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "format": self.format, "tag": self.tag, "creator": self.creator, "present": self.present}


@dataclass
class Page:
    """One page of entries (a listing) or of hits (a search), with the total it was cut from."""

    total: int
    offset: int
    limit: int
    entries: list[LoraEntry]
    hits: list[Any] | None = None  # indexer.search.SearchHit, for a search

    @property
    def page(self) -> int:
        return self.offset // self.limit + 1 if self.limit else 1

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.limit)) if self.limit else 1


class SerialSearch:
    """A registry whose ``search`` runs one call at a time.

    The query embedder (a Hugging Face fast tokenizer and torch's thread setting) is not safe to
    use from several threads at once, and the web server answers requests on a thread pool while
    the compose worker retrieves on its own thread. Everything else passes through.
    """

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self._lock = threading.Lock()

    def search(self, *args: Any, **kwargs: Any) -> list[Any]:
        with self._lock:
            return self._registry.search(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


def list_entries(registry: Any, filters: Filters, limit: int, offset: int, name: str | None = None,
                 sort: str = "id") -> Page:
    """Entries in ``sort`` order (as ``loraregistry list --sort``), filtered, with their total."""
    from loraregistry.api import list_order

    order = list_order(sort)
    stmt = select(Version.id).join(Version.model)
    if filters.base:
        stmt = stmt.where(Version.base_family == filters.base)
    if filters.present:
        stmt = stmt.where(Version.files.any(LoraFile.status == "present"))
    if filters.format:
        stmt = stmt.where(Version.files.any(LoraFile.format == filters.format))
    if filters.tag:
        stmt = stmt.where(LoraModel.tags.any(Tag.name == filters.tag.strip().lower()))
    if filters.creator:
        stmt = stmt.where(func.lower(LoraModel.creator) == filters.creator.strip().lower())
    if name:
        stmt = stmt.where(LoraModel.name.ilike(f"%{name}%"))
    with registry.session() as session:
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        ids = list(session.scalars(stmt.order_by(*order).limit(limit).offset(offset)))
        found = entries_by_id(session, ids)
        entries = [found[i] for i in ids if i in found]
    return Page(total, offset, limit, entries)


def search_entries(registry: Any, query: str, filters: Filters, limit: int, offset: int) -> Page:
    """The CLI's search (``Registry.search``), paged; filters it cannot apply are applied to its hits."""
    hits = registry.search(query, k=SEARCH_DEPTH, base=filters.base, present_only=filters.present, tag=filters.tag,
                           creator=filters.creator, format=filters.format)
    window = hits[offset : offset + limit]
    return Page(len(hits), offset, limit, [h.entry for h in window], window)


def facets(registry: Any, top: int = 200) -> dict[str, Any]:
    """Choices for the filters: families and formats with counts, the most used tags and creators."""
    with registry.session() as session:
        families = dict(session.execute(select(Version.base_family, func.count()).group_by(Version.base_family)).all())
        formats = dict(session.execute(
            select(LoraFile.format, func.count()).where(LoraFile.format.is_not(None)).group_by(LoraFile.format)).all())
        tags = session.execute(
            select(Tag.name, func.count()).join(model_tags, model_tags.c.tag_id == Tag.id)
            .group_by(Tag.name).order_by(func.count().desc(), Tag.name).limit(top)).all()
        creators = session.execute(
            select(LoraModel.creator, func.count()).where(LoraModel.creator.is_not(None))
            .group_by(LoraModel.creator).order_by(func.count().desc(), LoraModel.creator).limit(top)).all()
    return {
        "base_families": {f: families.get(f, 0) for f in FAMILIES},
        "formats": dict(sorted(formats.items())),
        "tags": [{"name": t, "count": n} for t, n in tags],
        "creators": [{"name": c, "count": n} for c, n in creators],
    }


@dataclass
class EntryDetail:
    """Everything the detail page shows: the entry (as ``show --json``), its files, its model's versions."""

    entry: LoraEntry
    version_description: str | None
    files: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)

    def civitai(self) -> dict[str, str | None]:
        e = self.entry
        model = f"https://civitai.com/models/{e.civitai_model_id}" if e.civitai_model_id else None
        return {
            "model": model,
            "version": f"{model}?modelVersionId={e.civitai_version_id}" if model and e.civitai_version_id else None,
            "by_hash": f"https://civitai.com/api/v1/model-versions/by-hash/{e.sha256}" if e.sha256 else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry.to_dict(), "version_description": self.version_description,
                "files": self.files, "versions": self.versions, "civitai": self.civitai()}


def entry_detail(registry: Any, entry_id: int) -> EntryDetail:
    with registry.session() as session:
        version = session.scalar(version_query().where(Version.id == entry_id))
        if version is None:
            raise NotFound(f"no registry entry with id {entry_id}")
        files = [{
            "name": f.name, "path": f.path, "status": f.status, "kind": f.kind, "primary": f.is_primary,
            "size_bytes": f.size_bytes, "sha256": f.sha256, "sha256_verified": f.sha256_verified, "autov2": f.autov2,
            "format": f.format, "detected_family": f.detected_family, "rank": f.rank, "alpha": f.alpha,
            "unet_modules": f.unet_modules, "te_modules": f.te_modules, "source": f.source, "preview_path": f.preview_path,
        } for f in version.files]
        siblings = session.scalars(
            select(Version).where(Version.model_id == version.model_id).order_by(Version.id)).all()
        present = set(session.scalars(select(LoraFile.version_id).where(
            LoraFile.version_id.in_([v.id for v in siblings]), LoraFile.status == "present")))
        versions = [{
            "id": v.id, "name": v.name, "civitai_version_id": v.civitai_id, "base_model": v.base_model,
            "base_family": v.base_family, "published_at": v.published_at.isoformat() if v.published_at else None,
            "file_present": v.id in present, "current": v.id == version.id,
        } for v in siblings]
        return EntryDetail(entry_of(version), version.description, files, versions)


def lora_tag(e: LoraEntry) -> str:
    """What A1111 and ComfyUI prompts name a LoRA by: the file's stem (else the model's name)."""
    name = os.path.basename(e.file_path) if e.file_path else e.name
    stem = name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name
    return f"<lora:{stem}:1>"


def copy_text(e: LoraEntry) -> str:
    """The copy button's text: the LoRA tag, then the trigger words."""
    return ", ".join([lora_tag(e), *e.trigger_words]) if e.trigger_words else lora_tag(e)


def preview_file(registry: Any, entry_id: int) -> tuple[str, str] | None:
    """(path, media type) of the entry's preview image, or None.

    Only a path the ingest recorded is ever opened (nothing from the request reaches the file
    system), and only while it is still a regular image file whose real location is in its own
    directory: a preview swapped for a symlink to elsewhere after the ingest is not served.
    """
    with registry.session() as session:  # one small query: a card grid asks this 50 times a page
        path = session.scalars(
            select(LoraFile.preview_path).where(LoraFile.version_id == entry_id, LoraFile.status == "present",
                                                LoraFile.preview_path.is_not(None))
            .order_by(LoraFile.kind.is_distinct_from("Model"), LoraFile.is_primary.desc(), LoraFile.id)).first()
    if not path:
        return None
    real = os.path.realpath(path)
    if os.path.dirname(real) != os.path.realpath(os.path.dirname(path)):
        return None
    try:
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PREVIEW_BYTES:
            return None
        with open(real, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    media = image_type(head)
    return (real, media) if media else None


def image_type(head: bytes) -> str | None:
    for magic, media in _IMAGE_MAGIC:
        if head.startswith(magic):
            return media
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None
