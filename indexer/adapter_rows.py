"""An adapter file's rows in SQL: which model and version it belongs to, duplicates, and the
columns its header fills."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.sidecars import clean_metadata
from registry.civitai import FileRecord, ModelRecord, VersionRecord
from registry.formats import FormatInfo
from registry.hashing import autov2
from registry.models import LoraFile, LoraModel, Version
from registry.safetensors_header import SafetensorsHeader
from registry.service import CatalogWriter, set_trigger_words


@dataclass
class AdapterFile:
    """What the ingest read of one adapter file."""

    path: str
    size: int
    mtime: int
    sha256: str | None
    verified: bool  # sha256 was computed from the bytes, not taken from a sidecar
    header: SafetensorsHeader
    info: FormatInfo
    preview: str | None = None  # the image beside the file (indexer.walk.PREVIEW_SUFFIXES)


class Duplicate(Exception):
    """The file's bytes are already in the registry at another present path."""


def store_adapter(session: Session, writer: CatalogWriter, known_files: dict[str, LoraFile], known: LoraFile | None,
                  record: ModelRecord | None, match: tuple[VersionRecord, FileRecord] | None, f: AdapterFile,
                  warn: Callable[[str, str], None]) -> tuple[LoraFile, bool]:
    """The file's row, and whether SQL already held it unchanged at this path (in a savepoint:
    a Duplicate leaves nothing behind)."""
    with session.begin_nested():
        row, version = known, None
        if record is not None:
            writer.prefetch([record])
            model = writer.upsert_model(record, "sidecar")
            if match is not None:
                version = writer.find_version(model, match[0])
                if row is None:
                    row = writer.upsert_catalog_file(version, match[1], "sidecar")
            elif model.versions:
                version = model.versions[0]
            else:
                version = Version(base_family="other", base_family_source="sidecar", source="sidecar")
                model.versions.append(version)
        if row is None:
            row = match_catalog(session, f.sha256, os.path.basename(f.path))
        if row is not None and row.path is not None and row.path != f.path:
            if os.path.exists(row.path) and row.status == "present":
                raise Duplicate(f"same file as {row.path} (SHA256 {(f.sha256 or '')[:12]}…)")
            known_files.pop(row.path, None)  # the file moved: adopt the new path
        if row is None:
            if version is not None:
                row = LoraFile(name=os.path.basename(f.path), status="present", source="header")
                version.files.append(row)
            else:
                row = synthesize(session, f)
        if known is None and (other := sha_taken(session, f.sha256, row, f.path)):
            raise Duplicate(f"same SHA256 as {other}")
        # A row that already holds this path and these bytes was stored by another process
        # after this batch looked (PostgreSQL reads committed rows statement by statement).
        already = row.path == f.path and (row.size_bytes, row.mtime_ns, row.status) == (f.size, f.mtime, "present")
        fill_file(row, f)
        apply_family(row.version, f, warn)
        session.flush()
    return row, already


def sha_taken(session: Session, sha256: str | None, row: LoraFile, path: str) -> str | None:
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


def match_catalog(session: Session, sha256: str | None, name: str) -> LoraFile | None:
    """A catalog-only record of this very file: by SHA256, then AutoV2, then a unique file name."""
    if sha256:
        row = session.scalars(select(LoraFile).where(LoraFile.sha256 == sha256).order_by(LoraFile.path.is_not(None), LoraFile.id)).first()
        if row is not None:
            return row
        row = session.scalars(select(LoraFile).where(LoraFile.autov2 == autov2(sha256), LoraFile.path.is_(None)).order_by(LoraFile.id)).first()
        if row is not None:
            return row
    rows = session.scalars(select(LoraFile).where(LoraFile.name == name, LoraFile.path.is_(None)).limit(2)).all()
    return rows[0] if len(rows) == 1 else None


def synthesize(session: Session, f: AdapterFile) -> LoraFile:
    """A local file no record describes: a model of its own, named from its metadata or file name."""
    meta = f.header.metadata
    name = meta.get("ss_output_name") or meta.get("modelspec.title") or os.path.splitext(os.path.basename(f.path))[0]
    family = f.info.base_family or "other"
    model = LoraModel(name=name[:512], source="header", description=meta.get("modelspec.description") or None)
    version = Version(name=None, base_model=None, base_family=family, base_family_source="header", source="header")
    row = LoraFile(name=os.path.basename(f.path), status="present", source="header")
    version.files.append(row)
    model.versions.append(version)
    session.add(model)
    trigger = meta.get("modelspec.trigger_phrase")
    if trigger:
        set_trigger_words(version, [trigger], "header")
    return row


def fill_file(row: LoraFile, f: AdapterFile) -> None:
    """The file's columns from what was read of it."""
    info = f.info
    row.path = f.path
    row.status = "present"
    row.size_bytes = f.size
    row.mtime_ns = f.mtime
    if f.sha256 and (f.verified or not row.sha256_verified):
        row.sha256 = f.sha256
        row.autov2 = autov2(f.sha256)
        row.sha256_verified = f.verified
    row.format = info.format
    row.detected_family = info.base_family
    row.rank = info.rank
    row.alpha = info.alpha
    row.unet_modules = info.unet_modules
    row.te_modules = info.te_modules
    row.header_metadata = clean_metadata(f.header.metadata) or None
    row.preview_path = f.preview
    if row.kind is None:
        row.kind = "Model"


def apply_family(version: Version, f: AdapterFile, warn: Callable[[str, str], None]) -> None:
    """Tensor shapes decide the base family over what a sidecar claims."""
    info = f.info
    for note in info.notes:
        warn(f.path, note)
    if info.base_family is None or not info.family_evidence.startswith(("shapes", "names")):
        return
    if version.base_family != info.base_family and version.base_family_source != "header":
        if version.base_model:
            warn(f.path, f"Civitai says {version.base_model!r}, tensor shapes say {info.base_family}: shapes win")
    version.base_family = info.base_family
    version.base_family_source = "header"
