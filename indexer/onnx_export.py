"""Export a sentence-transformers model to ONNX once, from its local weights, and cache the result.

sentence-transformers' own ONNX backend goes through optimum-onnx, which requires transformers < 4.58
(this project needs 5.x), so the export is done here with ``torch.onnx.export`` on the model's whole
pipeline (transformer, pooling, normalisation): the ONNX graph maps token ids to the very sentence
vector that ``SentenceTransformer.encode`` returns. Nothing is downloaded.

The export lands in ``<data dir>/onnx/<model>-<key>/``: ``model.onnx`` (float32), optionally
``model-int8.onnx`` (dynamic int8 quantisation of the weight matrices), the tokenizer, and
``export.json`` last, which marks the directory complete. ``key`` hashes the model's files (path,
size, modification time) and the export settings, so an upgraded model package or a changed setting
gets a fresh export and an unchanged one is reused. The float32 export is checked against torch on
probe texts before it is accepted: below ``MIN_COSINE`` it is refused, so that the registry never
treats vectors that differ as interchangeable.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

EXPORT_VERSION = 1  # bump when the export itself changes: old caches are then ignored
MARKER = "export.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
# float32 ONNX computes the same function as torch; anything below this is a broken export.
MIN_COSINE = 0.9999
# Varied lengths, one past the 64-token cut, for the torch-vs-ONNX check.
PROBE_TEXTS = [
    "a knight in shining armor, castle background",
    "1girl",
    "Pixel art style. pixel art, 8bit. style, retro, game. A LoRA trained on sprites from old console games, "
    "with hard edges and a limited palette; use weight 0.7 and the trigger word for best results on SD 1.5.",
    "watercolor landscape, misty mountains at dawn",
    "Genshin Impact character: Hu Tao. hutao, twin tails, red eyes. character, anime, game character",
]


class ExportError(RuntimeError):
    """The model cannot be exported, or its export does not reproduce torch's vectors."""


def export_key(model_path: str, max_tokens: int) -> str:
    """A cheap fingerprint of the model's files and the export settings (no 90 MB hashing per start)."""
    root = Path(model_path)
    files = []
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file():
                st = p.stat()
                files.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    payload = {"model": str(root.resolve()) if root.exists() else model_path, "files": files,
               "max_tokens": max_tokens, "export_version": EXPORT_VERSION}  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def export_dir(cache_root: Path, name: str, model_path: str, max_tokens: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name or name)[:60]
    return cache_root / f"{safe}-{export_key(model_path, max_tokens)}"


def read_marker(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_export(cache_root: Path, name: str, model_path: str, max_tokens: int, int8: bool) -> Path:
    """The cached export directory for this model, exporting (and quantising) first if needed."""
    target = export_dir(cache_root, name, model_path, max_tokens)
    marker = read_marker(target)
    if marker is not None and (not int8 or (target / INT8_FILE).exists()):
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    if marker is None:
        work = Path(tempfile.mkdtemp(dir=cache_root, prefix=".export-"))
        work.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users of a shared data dir
        try:
            _export(model_path, work, max_tokens)
            try:
                os.replace(work, target)  # atomic; a concurrent exporter that finished first wins
            except OSError:
                if read_marker(target) is None:
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if int8 and not (target / INT8_FILE).exists():
        quantize_int8(target)
    return target


def _export(model_path: str, out: Path, max_tokens: int) -> None:
    try:
        import numpy as np
        import onnxruntime as ort
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ExportError(f"exporting to ONNX needs torch, sentence-transformers and onnxruntime: {exc}") from exc
    hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(model_path, device="cpu")
    except Exception as exc:  # missing files, an id that is not on this machine
        raise ExportError(f"cannot load {model_path!r} to export it: {exc}") from exc
    model.max_seq_length = max_tokens
    model.eval()
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{model_path!r} has no fast (tokenizers) tokenizer to run without torch")
    tokenizer.save_pretrained(str(out))
    if not (out / "tokenizer.json").exists():
        raise ExportError(f"{model_path!r}: the tokenizer did not save a tokenizer.json")

    class Pipeline(torch.nn.Module):
        """The whole sentence-transformers pipeline as one graph: token ids in, sentence vector out."""

        def __init__(self, st: torch.nn.Module) -> None:
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids):
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.st(features)["sentence_embedding"]

    sample = tokenizer(PROBE_TEXTS[:2], padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    inputs = (sample["input_ids"], sample["attention_mask"], sample.get("token_type_ids", torch.zeros_like(sample["input_ids"])))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            # dynamo=False: the TorchScript exporter needs no onnxscript and handles BERT-style models.
            torch.onnx.export(
                Pipeline(model), inputs, str(out / FP32_FILE), dynamo=False, input_names=names,
                output_names=["sentence_embedding"], opset_version=17, do_constant_folding=True,
                dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names}, "sentence_embedding": {0: "batch"}},
            )  # fmt: skip
    except Exception as exc:  # an architecture the tracer cannot follow
        raise ExportError(f"cannot export {model_path!r} to ONNX: {exc}") from exc

    # The export must reproduce torch's vectors before the registry treats them as the same.
    reference = model.encode(PROBE_TEXTS, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    session = ort.InferenceSession(str(out / FP32_FILE), providers=["CPUExecutionProvider"])
    enc = tokenizer(PROBE_TEXTS, padding=True, truncation=True, max_length=max_tokens, return_tensors="np")
    feed = {i.name: np.asarray(enc.get(i.name, np.zeros_like(enc["input_ids"])), dtype=np.int64) for i in session.get_inputs()}
    vectors = session.run(None, feed)[0]
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = float(np.min(np.sum(vectors * reference, axis=1)))
    if cosine < MIN_COSINE:
        raise ExportError(f"the ONNX export of {model_path!r} differs from torch (cosine {cosine:.5f} < {MIN_COSINE})")
    info = {"model": model_path, "dim": int(reference.shape[1]), "max_tokens": max_tokens,
            "probe_min_cosine_vs_torch": cosine, "torch": torch.__version__, "onnxruntime": ort.__version__,
            "export_version": EXPORT_VERSION}  # fmt: skip
    (out / MARKER).write_text(json.dumps(info, indent=2))


def quantize_int8(directory: Path) -> None:
    """Dynamic int8 quantisation of the weight matrices, per output channel.

    Per channel because per-tensor scales lost too much: measured on 512 catalog texts, per-tensor
    int8 gave cosine 0.95 (min 0.90) to torch's vectors, per channel 0.993 (min 0.985). Only
    MatMuls with a constant weight are quantised (activation x activation products stay float).
    """
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ExportError(f"int8 quantisation needs the onnx package: {exc}") from exc
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".int8-", suffix=".onnx")
    os.close(fd)
    try:
        import logging

        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice on every export
        try:
            quantize_dynamic(
                str(directory / FP32_FILE), tmp, weight_type=QuantType.QInt8, per_channel=True,
                extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
            )  # fmt: skip
        finally:
            logging.getLogger().setLevel(quiet)
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / INT8_FILE)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"cannot quantise {directory / FP32_FILE}: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
