"""One ingest in a process of its own, for the concurrency and kill -9 tests.

    python -m tests.registry.ingest_worker URL DUMP [--batch-size N] [--kill-at ITEM] [--kill-in STAGE] [--kill-after S]

Prints the ingest report as JSON. ``--kill-at N`` SIGKILLs the process as it finishes the Nth item,
``--kill-in embed`` just after the first batch's embeddings are written (before its commit),
``--kill-in index`` after the new index file is written but before the manifest is replaced, and
``--kill-after S`` at a wall-clock moment. Embeddings come from ``HashEmbedder`` (no model to load),
so a worker starts in a second or two.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading

import numpy as np

HASH_EMBED_MODEL = "test-hash-32"


class HashEmbedder:
    """A deterministic stand-in for the sentence-transformers embedder: same interface, no model."""

    name = HASH_EMBED_MODEL
    dim = 32

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8", "replace")).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out

    def encode_queries(self, phrases: list[str]) -> np.ndarray:
        return self.encode(phrases)


def install_hash_embedder() -> None:
    """Make ``get_embedder(HASH_EMBED_MODEL)`` return a HashEmbedder (tests call this too)."""
    import indexer.embed as embed

    if getattr(embed.get_embedder, "_hash_patched", False):
        return
    real = embed.get_embedder
    shared = HashEmbedder()

    def get_embedder(name: str, backend: str | None = None):
        return shared if name == HASH_EMBED_MODEL else real(name, backend)

    get_embedder._hash_patched = True  # type: ignore[attr-defined]
    embed.get_embedder = get_embedder


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("dump")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--kill-in", choices=("embed", "index"))
    parser.add_argument("--kill-after", type=float)
    args = parser.parse_args(argv)

    install_hash_embedder()
    from loraregistry.api import Registry

    if args.kill_after is not None:
        threading.Timer(args.kill_after, _die).start()
    if args.kill_in == "embed":
        import indexer.sync as sync

        real_update = sync.update_embeddings

        def update_then_die(*a, **kw):
            real_update(*a, **kw)
            _die()

        sync.update_embeddings = update_then_die
    elif args.kill_in == "index":
        import indexer.faiss_index as faiss_index

        real_replace = os.replace

        def replace(src, dst):
            if str(dst).endswith(faiss_index.MANIFEST):
                _die()
            real_replace(src, dst)

        faiss_index.os.replace = replace  # faiss_index's own module reference to os

    done = 0

    def progress(n: int, path: str) -> None:
        nonlocal done
        done += n
        if args.kill_at is not None and done >= args.kill_at:
            _die()

    reg = Registry.open(args.url, embed_model=HASH_EMBED_MODEL)
    report = reg.ingest(args.dump, batch_size=args.batch_size, progress=progress)
    json.dump(report.to_dict(), sys.stdout)
    reg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
