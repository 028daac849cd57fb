"""Functions that change or read the registry through a Session. No click, no printing.

The ingest calls these; they raise domain errors (registry.errors) and never commit: the caller owns
the unit of work, so that a batch lands whole or not at all.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from registry.civitai import FileRecord, ModelRecord, VersionRecord, normalize_base_model
from registry.models import LoraFile, LoraModel, RegistryState, Tag, TriggerWord, Version, model_tags
from registry.text import normalize_word

EMBEDDINGS_STAMP = "embeddings_stamp"


class CatalogWriter:
    """Inserts or updates models, versions, trigger words and catalog files from parsed records.

    ``prefetch`` loads, in three queries, every existing row a batch of records refers to, so that
    ingesting thousands of records does not cost one SELECT per record, version and file.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._tags: dict[str, Tag] = {}
        self._models: dict[int, LoraModel] = {}
        self._versions: dict[int, Version] = {}
        self._files: dict[int, LoraFile] = {}
        self._prefetched: tuple[set[int], set[int], set[int]] = (set(), set(), set())

    def prefetch(self, records: Iterable[ModelRecord]) -> None:
        records = list(records)
        model_ids = {r.civitai_id for r in records if r.civitai_id is not None}
        version_ids = {v.civitai_id for r in records for v in r.versions if v.civitai_id is not None}
        file_ids = {f.civitai_id for r in records for v in r.versions for f in v.files if f.civitai_id is not None}
        s = self.session
        for chunk in _chunks(model_ids):
            for m in s.scalars(
                select(LoraModel).where(LoraModel.civitai_id.in_(chunk)).options(
                    selectinload(LoraModel.versions).selectinload(Version.files),
                    selectinload(LoraModel.versions).selectinload(Version.trigger_words),
                    selectinload(LoraModel.tags),
                )
            ):
                self._models[m.civitai_id] = m
        for chunk in _chunks(version_ids):
            for v in s.scalars(select(Version).where(Version.civitai_id.in_(chunk)).options(
                selectinload(Version.files), selectinload(Version.trigger_words)
            )):
                self._versions[v.civitai_id] = v
        for chunk in _chunks(file_ids):
            for f in s.scalars(select(LoraFile).where(LoraFile.civitai_id.in_(chunk))):
                self._files[f.civitai_id] = f
        # Tags too: a SELECT per tag autoflushed the batch each time, then lazy-loaded what it had
        # flushed (about 60% of a catalog ingest's SQL time, profiled on the 7,951-record catalog).
        tag_names = {_tag_key(t) for r in records for t in r.tags if t.strip()} - self._tags.keys()
        for chunk in _chunks(tag_names):
            for t in s.scalars(select(Tag).where(Tag.name.in_(chunk))):
                self._tags[t.name] = t
        self._prefetched = (model_ids, version_ids, file_ids)

    def forget(self) -> None:
        """Drop cached rows after a savepoint rollback (objects created inside it are gone)."""
        self._tags.clear()
        self._models.clear()
        self._versions.clear()
        self._files.clear()
        self._prefetched = (set(), set(), set())

    def tag(self, name: str) -> Tag:
        key = _tag_key(name)
        tag = self._tags.get(key)
        if tag is None:
            with self.session.no_autoflush:  # tags created in this batch are in self._tags already
                tag = self.session.scalar(select(Tag).where(Tag.name == key))
            if tag is None:
                tag = Tag(name=key)
                self.session.add(tag)
            self._tags[key] = tag
        return tag

    def _lookup(self, kind: int, cache: dict, entity: type, civitai_id: int | None):
        if civitai_id is None:
            return None
        found = cache.get(civitai_id)
        if found is None and civitai_id not in self._prefetched[kind]:
            found = self.session.scalar(select(entity).where(entity.civitai_id == civitai_id))
        return found

    def upsert_model(self, rec: ModelRecord, source: str, model: LoraModel | None = None) -> LoraModel:
        """Insert or update a model and its versions and catalog files from a parsed Civitai record."""
        if model is None:
            model = self._lookup(0, self._models, LoraModel, rec.civitai_id)
        if model is None:
            model = LoraModel(civitai_id=rec.civitai_id, name=rec.name, source=source, nsfw=rec.nsfw)
            self.session.add(model)
            if rec.civitai_id is not None:
                self._models[rec.civitai_id] = model
        else:
            _set(model, "name", rec.name)
            if rec.civitai_id is not None:
                _set(model, "nsfw", rec.nsfw)
        _set(model, "type", rec.type)
        _set(model, "description", rec.description)
        _set(model, "creator", rec.creator)
        if rec.tags:
            wanted = sorted({_tag_key(t) for t in rec.tags if t.strip()})
            if sorted(t.name for t in model.tags) != wanted:
                model.tags = [self.tag(name) for name in wanted]
        for vrec in rec.versions:
            self.upsert_version(model, vrec, source)
        return model

    def find_version(self, model: LoraModel, vrec: VersionRecord) -> Version | None:
        if vrec.civitai_id is None:
            return next((v for v in model.versions if v.civitai_id is None), None)
        for version in model.versions:
            if version.civitai_id == vrec.civitai_id:
                return version
        found = self._lookup(1, self._versions, Version, vrec.civitai_id)
        if found is not None:  # a version record can move between models (merged uploads)
            found.model = model
        return found

    def upsert_version(self, model: LoraModel, vrec: VersionRecord, source: str) -> Version:
        version = self.find_version(model, vrec)
        family = normalize_base_model(vrec.base_model) if vrec.base_model else None
        if version is None:
            version = Version(
                civitai_id=vrec.civitai_id,
                name=vrec.name,
                base_model=vrec.base_model,
                base_family=family or "other",
                base_family_source=source,
                source=source,
            )
            model.versions.append(version)
            if vrec.civitai_id is not None:
                self._versions[vrec.civitai_id] = version
        else:
            _set(version, "name", vrec.name)
            _set(version, "base_model", vrec.base_model)
            if family and version.base_family_source != "header":  # tensor shapes outrank any record
                _set(version, "base_family", family)
                version.base_family_source = source
        _set(version, "description", vrec.description)
        _set(version, "published_at", vrec.published_at)
        for attr in ("downloads", "rating", "rating_count"):
            _set(version, attr, getattr(vrec, attr))
        if vrec.trained_words:
            set_trigger_words(version, vrec.trained_words, source)
        for frec in vrec.files:
            self.upsert_catalog_file(version, frec, source)
        return version

    def upsert_catalog_file(self, version: Version, frec: FileRecord, source: str) -> LoraFile:
        row = None
        if frec.civitai_id is not None:
            row = next((f for f in version.files if f.civitai_id == frec.civitai_id), None)
            if row is None:
                row = self._lookup(2, self._files, LoraFile, frec.civitai_id)
                if row is not None:
                    row.version = version
        else:
            row = next(
                (f for f in version.files if f.name == frec.name or (frec.sha256 and f.sha256 == frec.sha256)), None
            )
        if row is None:
            row = LoraFile(name=frec.name, civitai_id=frec.civitai_id, status="catalog", source=source)
            version.files.append(row)
            if frec.civitai_id is not None:
                self._files[frec.civitai_id] = row
        _set(row, "name", frec.name)
        _set(row, "kind", frec.kind)
        if frec.primary:
            row.is_primary = True
        if not row.sha256_verified:  # a hash computed from the bytes outranks a published one
            _set(row, "sha256", frec.sha256)
            _set(row, "autov2", frec.autov2)
            if row.path is None:
                _set(row, "size_bytes", frec.size_bytes)
        if row.format is None and frec.format == "PickleTensor":
            row.format = "pickle"
        return row


def _set(obj: object, attr: str, value: object) -> None:
    """Overwrite a fact only with a known value: a later record with a null field keeps the old fact."""
    if value is not None and getattr(obj, attr) != value:
        setattr(obj, attr, value)


def _chunks(values: set[int], size: int = 500) -> Iterable[list[int]]:
    items = sorted(values)
    for i in range(0, len(items), size):
        yield items[i : i + size]


def set_trigger_words(version: Version, words: Iterable[str], source: str) -> None:
    wanted: dict[str, str] = {}
    for word in words:
        norm = normalize_word(word)[:512]
        if norm and norm not in wanted:
            wanted[norm] = word[:512]
    if [t.word_norm for t in version.trigger_words] == list(wanted):
        return
    existing = {t.word_norm: t for t in version.trigger_words}
    version.trigger_words = [
        existing.get(norm) or TriggerWord(word=word, word_norm=norm, source=source) for norm, word in wanted.items()
    ]
    for position, trigger in enumerate(version.trigger_words):
        trigger.position = position


def bump_stamp(session: Session, key: str = EMBEDDINGS_STAMP) -> None:
    """Count a change that derived data (the FAISS index) must follow; read by every process."""
    updated = session.execute(
        update(RegistryState).where(RegistryState.key == key).values(value=RegistryState.value + 1)
    ).rowcount
    if not updated:
        session.add(RegistryState(key=key, value=1))
        session.flush()


def read_stamp(session: Session, key: str = EMBEDDINGS_STAMP) -> int:
    return session.scalar(select(RegistryState.value).where(RegistryState.key == key)) or 0


_NAME_NOISE = re.compile(
    r"\b(lora|locon|loha|lokr|lycoris|dora|sdxl|sd ?1\.5|sd ?2\.1|flux(\.1)?|pony|v\d+(\.\d+)*|version \d+)\b", re.I
)


def clean_name(name: str) -> str:
    """A model name as people would type it: no bracketed notes, no 'LoRA'/'v2' decorations."""
    text = re.sub(r"[\[【(「（].*?[\]】)」）]", " ", name)
    text = _NAME_NOISE.sub(" ", text)
    text = re.sub(r"[|/\\:_\-–—~]+", " ", text)
    return normalize_word(text)


@dataclass(frozen=True)
class LoraEntry:
    """One registry entry (a version), with what a caller needs to load and describe it."""

    id: int
    civitai_model_id: int | None
    civitai_version_id: int | None
    model_id: int
    name: str
    version_name: str | None
    base_model: str | None
    base_family: str
    file_path: str | None
    file_status: str | None
    sha256: str | None
    autov2: str | None
    format: str | None
    rank: int | None
    alpha: float | None
    trigger_words: tuple[str, ...]
    tags: tuple[str, ...]
    description: str | None
    creator: str | None
    nsfw: bool
    header_metadata: dict | None
    preview_path: str | None = None  # the image beside the file, when the ingest found one
    downloads: int | None = None  # Civitai's stats of the version, as last ingested
    rating: float | None = None
    rating_count: int | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict

        data = asdict(self)
        data["trigger_words"] = list(self.trigger_words)
        data["tags"] = list(self.tags)
        return data


def _file_rank(f) -> tuple:
    """Order of preference among a version's files (an ORM row or a Core row): a present adapter
    first, then the primary published one."""
    return (f.status != "present", f.kind not in (None, "Model"), not f.is_primary, f.format == "pickle", f.id or 0)


def primary_file(version: Version) -> LoraFile | None:
    """The file a composer loads: a present adapter first, then the primary published one."""
    return min(version.files, key=_file_rank) if version.files else None


def _make_entry(version, model, f, trigger_words: Iterable[str], tags: Iterable[str]) -> LoraEntry:
    """The entry from a version, its model and its primary file, as ORM objects or Core rows alike."""
    present = f is not None and f.status == "present"
    return LoraEntry(
        id=version.id,
        civitai_model_id=model.civitai_id,
        civitai_version_id=version.civitai_id,
        model_id=model.id,
        name=model.name,
        version_name=version.name,
        base_model=version.base_model,
        base_family=version.base_family,
        file_path=f.path if present else None,
        file_status=f.status if f is not None else None,
        sha256=f.sha256 if f is not None else None,
        autov2=f.autov2 if f is not None else None,
        format=f.format if f is not None else None,
        rank=f.rank if f is not None else None,
        alpha=f.alpha if f is not None else None,
        trigger_words=tuple(trigger_words),
        tags=tuple(tags),
        description=model.description,
        creator=model.creator,
        nsfw=model.nsfw,
        header_metadata=f.header_metadata if f is not None else None,
        preview_path=f.preview_path if present else None,
        downloads=version.downloads,
        rating=version.rating,
        rating_count=version.rating_count,
    )


def entry_of(version: Version) -> LoraEntry:
    return _make_entry(version, version.model, primary_file(version),
                       (t.word for t in version.trigger_words), (t.name for t in version.model.tags))


def entries_by_id(session: Session, version_ids: Iterable[int]) -> dict[int, LoraEntry]:
    """Entries by version id, read with plain Core selects.

    The search needs ten entries per query; loading them as ORM objects with their relationships
    (version_query) cost about 3 ms, a third of a search's budget, and these five selects about
    half of that (benchmarks/results/registry_idle.md)."""
    ids = list(dict.fromkeys(version_ids))
    if not ids:
        return {}
    versions = session.execute(select(Version.__table__).where(Version.id.in_(ids))).all()
    models = {m.id: m for m in session.execute(
        select(LoraModel.__table__).where(LoraModel.id.in_({v.model_id for v in versions})))}  # fmt: skip
    triggers: dict[int, list[str]] = {}
    for vid, word in session.execute(select(TriggerWord.version_id, TriggerWord.word)
                                     .where(TriggerWord.version_id.in_(ids)).order_by(TriggerWord.position)):  # fmt: skip
        triggers.setdefault(vid, []).append(word)
    tags: dict[int, list[str]] = {}
    for mid, name in session.execute(select(model_tags.c.model_id, Tag.name).join(Tag, Tag.id == model_tags.c.tag_id)
                                     .where(model_tags.c.model_id.in_(models))):  # fmt: skip
        tags.setdefault(mid, []).append(name)
    files: dict[int, list] = {}
    for f in session.execute(select(LoraFile.__table__).where(LoraFile.version_id.in_(ids))):
        files.setdefault(f.version_id, []).append(f)
    return {v.id: _make_entry(v, models[v.model_id], min(files[v.id], key=_file_rank) if v.id in files else None,
                              triggers.get(v.id, ()), tags.get(v.model_id, ()))
            for v in versions}  # fmt: skip


def _tag_key(name: str) -> str:
    return name.strip().lower()[:128]


def version_query():
    """Versions with everything entry_of reads, loaded in a few queries rather than one per row."""
    return select(Version).options(
        selectinload(Version.model).selectinload(LoraModel.tags),
        selectinload(Version.trigger_words),
        selectinload(Version.files),
    )
