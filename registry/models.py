"""What a user browses and filters: models, versions, trigger words, files, tags.

A *model* is a Civitai model (or one synthesised for a local file with no sidecar); a *version* is one
of its releases and is what the registry calls an entry (its primary key is the registry id); a
*file* is a concrete adapter on disk, or a catalog-only record of one (path is NULL).
Every row says where its facts came from (``source``: sidecar, header or catalog).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.db import Base, created_at, updated_at

SOURCES = ("sidecar", "header", "catalog")

model_tags = Table(
    "model_tags",
    Base.metadata,
    Column("model_id", ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True),
)


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)

    models: Mapped[list["LoraModel"]] = relationship(secondary=model_tags, back_populates="tags")


class LoraModel(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    civitai_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    name: Mapped[str] = mapped_column(String(512), index=True)
    type: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(Text)  # plain text, HTML stripped
    creator: Mapped[str | None] = mapped_column(String(256), index=True)
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[created_at]
    updated_at: Mapped[updated_at]

    versions: Mapped[list["Version"]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="Version.id"
    )
    tags: Mapped[list[Tag]] = relationship(secondary=model_tags, back_populates="models")
    embedding: Mapped["Embedding | None"] = relationship(back_populates="model", cascade="all, delete-orphan")


class Version(Base):
    __tablename__ = "versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    civitai_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    name: Mapped[str | None] = mapped_column(String(512))
    base_model: Mapped[str | None] = mapped_column(String(64))  # as Civitai names it ("SD 1.5")
    base_family: Mapped[str] = mapped_column(String(8), index=True, default="other")
    base_family_source: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[dt.datetime | None]
    downloads: Mapped[int | None] = mapped_column(BigInteger, index=True)  # Civitai's stats, as last ingested
    rating: Mapped[float | None] = mapped_column(Float)
    rating_count: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[created_at]
    updated_at: Mapped[updated_at]

    model: Mapped[LoraModel] = relationship(back_populates="versions")
    trigger_words: Mapped[list["TriggerWord"]] = relationship(
        back_populates="version", cascade="all, delete-orphan", order_by="TriggerWord.position"
    )
    files: Mapped[list["LoraFile"]] = relationship(
        back_populates="version", cascade="all, delete-orphan", order_by="LoraFile.id"
    )


class TriggerWord(Base):
    __tablename__ = "trigger_words"
    __table_args__ = (UniqueConstraint("version_id", "word_norm"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    word: Mapped[str] = mapped_column(String(512))
    word_norm: Mapped[str] = mapped_column(String(512), index=True)  # lower case, spaces collapsed
    position: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(16))

    version: Mapped[Version] = relationship(back_populates="trigger_words")


class LoraFile(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_version_id_primary", "version_id", "is_primary"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    civitai_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    name: Mapped[str] = mapped_column(String(1024), index=True)  # file name as published or found
    path: Mapped[str | None] = mapped_column(String(4096), unique=True)  # NULL: catalog-only
    status: Mapped[str] = mapped_column(String(16), index=True)  # present | missing | catalog
    kind: Mapped[str | None] = mapped_column(String(32))  # Civitai file type: Model, Training Data, ...
    is_primary: Mapped[bool] = mapped_column(Boolean, default=False)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    sha256_verified: Mapped[bool] = mapped_column(Boolean, default=False)  # hashed from the bytes here
    autov2: Mapped[str | None] = mapped_column(String(10), index=True)
    format: Mapped[str | None] = mapped_column(String(32), index=True)
    detected_family: Mapped[str | None] = mapped_column(String(8))
    rank: Mapped[int | None] = mapped_column(Integer)
    alpha: Mapped[float | None] = mapped_column(Float)
    unet_modules: Mapped[int | None] = mapped_column(Integer)
    te_modules: Mapped[int | None] = mapped_column(Integer)
    header_metadata: Mapped[dict[str, Any] | None]  # safetensors __metadata__: ss_*, modelspec.*, ...
    # The preview image beside the file (X.preview.png, X.png, X.jpeg, X.webp, ...), as the walk found it.
    preview_path: Mapped[str | None] = mapped_column(String(4096))
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[created_at]
    updated_at: Mapped[updated_at]

    version: Mapped[Version] = relationship(back_populates="files")


class Embedding(Base):
    """The text embedding of a model: the source of truth from which the FAISS index is derived."""

    __tablename__ = "embeddings"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    embed_model: Mapped[str] = mapped_column(String(256))
    dim: Mapped[int] = mapped_column(Integer)
    text_sha256: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little endian, L2-normalised
    updated_at: Mapped[updated_at]

    model: Mapped[LoraModel] = relationship(back_populates="embedding")


class ScannedPath(Base):
    """A path the ingest looked at that is not an adapter file row: a standalone record, or a file that
    was refused, failed or duplicated. Remembered with its size and mtime so that an unchanged one is
    not read again, and so that its problem is still reported."""

    __tablename__ = "scanned_paths"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String(4096), unique=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # record | ignored | refused | failed | duplicate
    reason: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[updated_at]


class RegistryState(Base):
    """Counters shared by every process using the registry, e.g. the embeddings' change stamp."""

    __tablename__ = "registry_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
