"""Keep the embeddings in SQL in step with the models, and the FAISS index in step with them."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from indexer.embed import BaseEmbedder, bytes_to_vector, document_text, text_sha256, vector_to_bytes
from indexer.faiss_index import METRIC, Manifest, build_index, save_index
from registry.models import Embedding, LoraModel, Version
from registry.service import bump_stamp, read_stamp

logger = logging.getLogger(__name__)


def model_document(model: LoraModel) -> str:
    triggers: list[str] = []
    for version in model.versions:
        for trigger in version.trigger_words:
            if trigger.word not in triggers:
                triggers.append(trigger.word)
    description = model.description or next((v.description for v in model.versions if v.description), None)
    return document_text(model.name, triggers, [t.name for t in model.tags], description)


def update_embeddings(session: Session, embedder: BaseEmbedder, model_ids: Iterable[int]) -> int:
    """Embed the models whose text changed (or whose embedding model differs). Returns how many."""
    ids = sorted(set(model_ids))
    changed = 0
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        models = session.scalars(
            select(LoraModel)
            .where(LoraModel.id.in_(chunk))
            .options(
                selectinload(LoraModel.versions).selectinload(Version.trigger_words),
                selectinload(LoraModel.tags),
                selectinload(LoraModel.embedding),
            )
        ).all()
        todo: list[tuple[LoraModel, str, str]] = []
        for model in models:
            text = model_document(model)
            digest = text_sha256(text)
            emb = model.embedding
            if emb is None or emb.text_sha256 != digest or emb.embed_model != embedder.name:
                todo.append((model, text, digest))
        if not todo:
            continue
        vectors = embedder.encode([t for _, t, _ in todo])
        for (model, _text, digest), vector in zip(todo, vectors):
            blob = vector_to_bytes(vector)
            if model.embedding is None:
                model.embedding = Embedding(embed_model=embedder.name, dim=embedder.dim, text_sha256=digest, vector=blob)
            else:
                model.embedding.embed_model = embedder.name
                model.embedding.dim = embedder.dim
                model.embedding.text_sha256 = digest
                model.embedding.vector = blob
        changed += len(todo)
    if changed:
        bump_stamp(session)
    return changed


def missing_embedding_ids(session: Session, embed_model: str) -> list[int]:
    """Models without an embedding from this model (an interrupted ingest, or a changed model)."""
    stmt = (
        select(LoraModel.id)
        .outerjoin(Embedding, Embedding.model_id == LoraModel.id)
        .where((Embedding.model_id.is_(None)) | (Embedding.embed_model != embed_model))
    )
    return list(session.scalars(stmt))


def rebuild_index(session: Session, embedder: BaseEmbedder, directory: Path) -> Manifest:
    """Derive the FAISS index from SQL, first embedding whatever is missing.

    Embeddings made under another name (another model, or int8 vs float32) are redone, never put in
    one index with these: their similarities would not be comparable.
    """
    missing = missing_embedding_ids(session, embedder.name)
    if missing:
        others = dict(session.execute(
            select(Embedding.embed_model, func.count()).where(Embedding.embed_model != embedder.name).group_by(Embedding.embed_model)
        ).all())  # fmt: skip
        if others:
            made_by = ", ".join(f"{n} by {name!r}" for name, n in sorted(others.items()))
            logger.warning(
                "re-embedding with %r: stored embeddings were made by another model or precision (%s); "
                "this happens once per switch", embedder.name, made_by,
            )  # fmt: skip
        update_embeddings(session, embedder, missing)
        session.commit()
    stamp = read_stamp(session)
    rows = session.execute(
        select(Embedding.model_id, Embedding.vector).where(Embedding.embed_model == embedder.name)
    ).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.stack([bytes_to_vector(r[1]) for r in rows]) if rows else np.zeros((0, embedder.dim), np.float32)
    index = build_index(ids, vectors, embedder.dim)
    manifest = Manifest(embed_model=embedder.name, dim=embedder.dim, metric=METRIC, count=len(rows), stamp=stamp,
                        index_file="", embedder=getattr(embedder, "runtime", ""))  # fmt: skip
    return save_index(directory, index, manifest)
