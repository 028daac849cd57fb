"""The fast embedding path: the model exported to ONNX (see indexer.onnx_export), run by ONNX Runtime.

At run time only onnxruntime, tokenizers and numpy are used: no torch import, so a search process
starts faster and holds less memory. The export itself (once per model, cached in the data
directory) does need torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.embed import DOCUMENT_MAX_TOKENS, BaseEmbedder, resolve_model_path
from indexer.onnx_export import FP32_FILE, INT8_FILE, ensure_export, read_marker
from registry.errors import IndexUnavailable

# Texts per ONNX Runtime call. The catalog's documents nearly all reach the 64-token cut, so padding
# is no concern; smaller batches keep the activations in cache (measured on one core: 16 texts per
# call ran 58 texts/s, 64 per call 47/s).
BATCH_SIZE = 16


class OnnxEmbedder(BaseEmbedder):
    """``precision``: "fp32" gives torch's vectors (same ``name``, so an index built by either path
    serves both); "int8" gives different vectors, so its ``name`` differs and switching re-embeds."""

    def __init__(self, name: str, precision: str = "fp32", cache_root: Path | None = None) -> None:
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be fp32 or int8, not {precision!r}")
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise IndexUnavailable(f"the onnx embedder needs onnxruntime (pip install onnxruntime): {exc}") from exc
        from indexer.onnx_export import ExportError
        from registry import settings

        self._ort = ort
        root = cache_root or settings.data_dir() / "onnx"
        try:
            self.directory = ensure_export(root, name, resolve_model_path(name), DOCUMENT_MAX_TOKENS, int8=precision == "int8")
        except (ExportError, OSError) as exc:
            raise IndexUnavailable(f"cannot prepare the ONNX model for {name!r}: {exc}") from exc
        marker = read_marker(self.directory) or {}
        self.model_file = self.directory / (INT8_FILE if precision == "int8" else FP32_FILE)
        self.precision = precision
        self.name = name if precision == "fp32" else f"{name}+int8"
        self.runtime = f"onnxruntime {ort.__version__} {precision}"
        self.tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        # What sentence-transformers does: cut at max_seq_length, pad to the longest text of a batch.
        self.tokenizer.enable_truncation(max_length=DOCUMENT_MAX_TOKENS)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id)
        self._sessions: dict[int, object] = {}
        self._inputs = [i.name for i in self._session(1).get_inputs()]
        self.dim = int(marker.get("dim") or self._run(self._session(1), ["probe"]).shape[1])
        super().__init__()

    def _session(self, threads: int):
        """One session per thread count: ONNX Runtime fixes its thread pool when a session is made."""
        session = self._sessions.get(threads)
        if session is None:
            ort = self._ort
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            # Idle pool threads spin by default, holding a core that a shared 2-core machine (or this
            # process's own SQL work) needs; a batch of 16 texts is long enough that waking costs little.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                session = ort.InferenceSession(str(self.model_file), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # a truncated or foreign file in the cache
                raise IndexUnavailable(f"ONNX Runtime cannot load {self.model_file}: {exc}; delete {self.directory} to re-export") from exc
            self._sessions[threads] = session
        return session

    def _run(self, session, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch([t.strip() for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}  # fmt: skip
        return session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]

    def _encode(self, texts: list[str], batch_size: int, threads: int) -> np.ndarray:
        session = self._session(threads)
        # Longest first, as sentence-transformers does, so that each batch pads little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._run(session, [texts[i] for i in chunk])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def encode(self, texts: list[str], batch_size: int = BATCH_SIZE, threads: int | None = None) -> np.ndarray:
        return super().encode(texts, batch_size=batch_size, threads=threads)
