"""The FAISS index derived from the embeddings in SQL: build, save atomically, load, check staleness.

FAISS ids are registry primary keys (models.id). The index directory holds ``manifest.json`` and the
index file it names; a new index is written under a new name and the manifest is replaced last with
os.replace, so a crash or a full disk never leaves a half-written index in use. Writers in several
processes sharing a directory take turns on an flock; what a killed writer left behind (temporary
files, index files no manifest names) is removed by the next one.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

MANIFEST = "manifest.json"
METRIC = "inner_product_on_normalized"  # cosine similarity


@dataclass(frozen=True)
class Manifest:
    embed_model: str
    dim: int
    metric: str
    count: int
    stamp: int  # registry_state.embeddings_stamp the index was built from
    index_file: str
    # What computed the vectors of the rebuild that wrote this index ("onnxruntime 1.32.0 fp32"). Only
    # ``embed_model`` decides compatibility: runtimes of one precision give the same vectors (checked
    # when the ONNX export is made), and int8 vectors carry a name of their own. Older indexes: "".
    embedder: str = ""


# From this many vectors on, an HNSW graph replaces the exact scan. A flat scan reads every vector for
# each query: about 150 MB at 100,000 x 384 floats, 20+ ms on a busy core, over the search budget;
# HNSW visits a few thousand. Below it the exact scan is a few ms, and a graph's build time and its
# approximation buy nothing.
HNSW_MIN_VECTORS = 50_000
HNSW_M = 32  # links per node: FAISS's usual choice for 384-dim text vectors
HNSW_EF_CONSTRUCTION = 80
# >= the 64 neighbours a phrase asks for (indexer.search.SEMANTIC_DEPTH), with margin: a short phrase's
# top 64 are near-ties at low similarity, where a graph walk misses most (128 found 90% of the exact
# top 64 at 100,000 entries in the registry benchmark)
HNSW_EF_SEARCH = 256


def build_index(ids: np.ndarray, vectors: np.ndarray, dim: int) -> faiss.Index:
    if len(ids) >= HNSW_MIN_VECTORS:
        graph = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        graph.hnsw.efSearch = HNSW_EF_SEARCH  # saved with the index
        index = faiss.IndexIDMap2(graph)
    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    return index


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _locked(directory: Path):
    with open(directory / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def save_index(directory: Path, index: faiss.Index, manifest: Manifest) -> Manifest:
    """Write ``index`` and then its manifest, atomically; raises OSError (the old index stays)."""
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        for stale in directory.glob(".*.tmp"):  # a writer killed mid-write; none runs now
            stale.unlink(missing_ok=True)
        index_file = f"index-{manifest.stamp}-{uuid.uuid4().hex[:8]}.faiss"
        try:
            _write_atomic(directory / index_file, faiss.serialize_index(index).tobytes())
            manifest = Manifest(**{**asdict(manifest), "index_file": index_file})
            _write_atomic(directory / MANIFEST, json.dumps(asdict(manifest), indent=2).encode())
        except BaseException:
            (directory / index_file).unlink(missing_ok=True)
            raise
        for old in directory.glob("index-*.faiss"):  # what no manifest points at any more
            if old.name != index_file:
                old.unlink(missing_ok=True)
    return manifest


def read_manifest(directory: Path) -> Manifest | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
        return Manifest(**data)
    except (OSError, ValueError, TypeError):
        return None


def load_index(directory: Path) -> tuple[faiss.Index, Manifest] | None:
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    try:
        data = np.frombuffer((directory / manifest.index_file).read_bytes(), dtype=np.uint8)
        index = faiss.deserialize_index(data)
    except (OSError, RuntimeError):
        return None
    if index.d != manifest.dim or index.ntotal != manifest.count:
        return None
    return index, manifest


def is_current(manifest: Manifest | None, embed_model: str, dim: int, stamp: int) -> bool:
    return (
        manifest is not None
        and manifest.embed_model == embed_model
        and manifest.dim == dim
        and manifest.metric == METRIC
        and manifest.stamp == stamp
    )
