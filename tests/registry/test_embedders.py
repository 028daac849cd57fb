"""The embedding paths: ONNX Runtime (float32, int8) against torch, the cached export, switching paths
on an existing index, the --embedder option, and what happens without ONNX Runtime."""
from __future__ import annotations

import gzip
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import indexer.embed as embed
import indexer.faiss_index as faiss_index
import indexer.onnx_export as onnx_export
from indexer.onnx_embed import OnnxEmbedder
from loraregistry.api import Registry
from registry.civitai import parse_model_record
from registry.errors import IndexUnavailable
from registry.models import Embedding
from tests.registry.test_ingest import make_dump

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def export_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export (and int8 quantisation) for the module: each costs seconds."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def catalog_texts(shared: Path) -> list[str]:
    """The documents of the first 96 catalog records, built as the ingest builds them."""
    texts = []
    with gzip.open(shared / "fixtures/civitai/civitai_lora_models_2023-07.jsonl.gz", "rt") as fh:
        for line in fh:
            rec = parse_model_record(json.loads(line))
            triggers = list(dict.fromkeys(w for v in rec.versions for w in v.trained_words))
            description = rec.description or next((v.description for v in rec.versions if v.description), None)
            texts.append(embed.document_text(rec.name, triggers, rec.tags, description))
            if len(texts) == 96:
                return texts
    return texts


def test_onnx_gives_torchs_vectors_and_int8_nearly(export_root: Path, catalog_texts: list[str]) -> None:
    torch_vectors = embed.get_embedder(MODEL, "torch").encode(catalog_texts)
    fp32 = OnnxEmbedder(MODEL, "fp32", cache_root=export_root)
    int8 = OnnxEmbedder(MODEL, "int8", cache_root=export_root)
    same = np.sum(fp32.encode(catalog_texts) * torch_vectors, axis=1)
    assert same.min() >= 0.9999  # the same function: an index made by either serves both
    assert fp32.name == MODEL and fp32.dim == 384
    close = np.sum(int8.encode(catalog_texts) * torch_vectors, axis=1)
    assert close.mean() >= 0.99 and close.min() >= 0.97, (close.mean(), close.min())
    assert int8.name == MODEL + "+int8"  # not interchangeable: its own name, so a switch re-embeds
    # queries go through the same model, one thread, cached
    phrases = ["son goku", "kamado nezuko", "son goku"]
    np.testing.assert_allclose(fp32.encode_queries(phrases), embed.get_embedder(MODEL, "torch").encode(phrases), atol=1e-4)


def test_encode_embeds_each_distinct_text_once(export_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fp32 = OnnxEmbedder(MODEL, "fp32", cache_root=export_root)
    seen: list[list[str]] = []
    real = fp32._encode
    monkeypatch.setattr(fp32, "_encode", lambda texts, b, t: seen.append(list(texts)) or real(texts, b, t))
    vectors = fp32.encode(["a red scarf", "a knight", "a red scarf"])
    assert seen == [["a red scarf", "a knight"]]
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])


def test_the_export_is_cached_and_reused(export_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = OnnxEmbedder(MODEL, "int8", cache_root=export_root)
    marker = (first.directory / onnx_export.MARKER).stat().st_mtime_ns
    files = sorted(p.name for p in first.directory.iterdir())
    assert {"model.onnx", "model-int8.onnx", "tokenizer.json", "export.json"} <= set(files)

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "_export", no_export)
    monkeypatch.setattr(onnx_export, "quantize_int8", no_export)
    again = OnnxEmbedder(MODEL, "int8", cache_root=export_root)
    assert again.directory == first.directory
    assert (again.directory / onnx_export.MARKER).stat().st_mtime_ns == marker
    assert sorted(p.name for p in export_root.iterdir()) == [first.directory.name]  # no temporary left
    # another setting (here the token cut) is another export, not a silent reuse
    assert onnx_export.export_dir(export_root, MODEL, embed.resolve_model_path(MODEL), 32) != first.directory


def test_a_broken_cached_model_gives_a_clear_error(export_root: Path, tmp_path: Path) -> None:
    import shutil

    good = OnnxEmbedder(MODEL, "fp32", cache_root=export_root).directory
    copy = tmp_path / "onnx" / good.name
    shutil.copytree(good, copy)
    (copy / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(IndexUnavailable, match="cannot load .*model.onnx.*re-export"):
        OnnxEmbedder(MODEL, "fp32", cache_root=tmp_path / "onnx")


def test_an_export_that_differs_from_torch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export, "MIN_COSINE", 1.5)  # no export can pass: stands for a wrong graph
    with pytest.raises(IndexUnavailable, match="differs from torch"):
        OnnxEmbedder(MODEL, "fp32", cache_root=tmp_path / "onnx")
    assert not list((tmp_path / "onnx").iterdir())  # nothing half-made is left to be reused


def test_without_onnxruntime_auto_falls_back_to_torch_and_onnx_says_why(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when it is not installed
    embed._get_embedder.cache_clear()
    try:
        with pytest.raises(IndexUnavailable, match="needs onnxruntime"):
            embed.get_embedder(MODEL, "onnx")
        with caplog.at_level(logging.WARNING, logger="indexer.embed"):
            fallback = embed.get_embedder(MODEL, "auto")
        assert isinstance(fallback, embed.TorchEmbedder) and fallback.name == MODEL
        assert "needs onnxruntime" in caplog.text and "using the torch embedder" in caplog.text
        with pytest.raises(IndexUnavailable, match="unknown embedder 'tensorrt'"):
            embed.get_embedder(MODEL, "tensorrt")
    finally:
        embed._get_embedder.cache_clear()


def _stored_models(reg: Registry) -> set[str]:
    from sqlalchemy import select

    with reg.session() as session:
        return set(session.scalars(select(Embedding.embed_model)))


def test_switching_embedder_reuses_equal_vectors_and_re_embeds_different_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_dump(tmp_path / "dump", 3)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    torch_reg = Registry.open(url, embedder="torch")
    torch_reg.ingest(tmp_path / "dump")
    built = faiss_index.read_manifest(torch_reg.index_dir)
    assert built.embed_model == MODEL and built.embedder.startswith("torch")

    # float32 ONNX: the same vectors, so the index is current and nothing is re-embedded
    onnx_reg = Registry.open(url, embedder="onnx")
    assert onnx_reg.search("trig1", k=1)[0].entry.name == "Subject 1"
    assert faiss_index.read_manifest(onnx_reg.index_dir) == built

    # int8: other vectors. Every model is re-embedded, with a message, before the index serves it
    int8_reg = Registry.open(url, embedder="onnx-int8")
    with caplog.at_level(logging.WARNING, logger="indexer.sync"):
        assert int8_reg.search("trig2", k=1)[0].entry.name == "Subject 2"
    assert "re-embedding with 'all-MiniLM-L6-v2+int8'" in caplog.text and "3 by 'all-MiniLM-L6-v2'" in caplog.text
    manifest = faiss_index.read_manifest(int8_reg.index_dir)
    assert (manifest.embed_model, manifest.count) == (MODEL + "+int8", 3) and "int8" in manifest.embedder
    assert _stored_models(int8_reg) == {MODEL + "+int8"}  # never a mix

    # and back: torch finds an index of other vectors, so it re-embeds rather than query it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="indexer.sync"):
        torch_reg.reindex(only_if_stale=True)
    assert "re-embedding with 'all-MiniLM-L6-v2'" in caplog.text
    assert faiss_index.read_manifest(torch_reg.index_dir).embed_model == MODEL
    assert _stored_models(torch_reg) == {MODEL}


def test_cli_embedder_option(tmp_path: Path) -> None:
    from loraregistry.cli import cli

    make_dump(tmp_path / "dump", 2)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    runner = CliRunner()
    result = runner.invoke(cli, ["--db", db, "--embedder", "torch", "ingest", str(tmp_path / "dump"), "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["--db", db, "--embedder", "torch", "reindex"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("indexed 2 models with all-MiniLM-L6-v2 (384 dims, torch ")
    result = runner.invoke(cli, ["--db", db, "reindex"], env={"LORAREGISTRY_EMBEDDER": "onnx-int8"})
    assert result.exit_code == 0, result.output
    assert "with all-MiniLM-L6-v2+int8 (384 dims, onnxruntime" in result.output
    result = runner.invoke(cli, ["--db", db, "--embedder", "tensorrt", "reindex"])
    assert result.exit_code == 2 and "'tensorrt' is not one of" in result.output
    option = next(p for p in cli.params if p.name == "embedder")
    assert tuple(option.type.choices) == embed.BACKENDS  # the CLI offers exactly what the library knows


def test_old_manifests_without_the_embedder_field_still_load(tmp_path: Path) -> None:
    index = faiss_index.build_index(np.arange(3), np.eye(3, 8, dtype=np.float32), 8)
    saved = faiss_index.save_index(tmp_path, index, faiss_index.Manifest(MODEL, 8, faiss_index.METRIC, 3, 1, ""))
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["embedder"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    loaded = faiss_index.load_index(tmp_path)
    assert loaded is not None and loaded[1].embedder == "" and loaded[1].index_file == saved.index_file
    assert faiss_index.is_current(loaded[1], MODEL, 8, 1)


def test_large_indexes_are_hnsw_and_find_the_exact_neighbours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    monkeypatch.setattr(faiss_index, "HNSW_MIN_VECTORS", 500)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(2000) * 7 + 100  # FAISS ids are registry keys, not positions
    index = faiss_index.build_index(ids, vectors, 32)
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexHNSWFlat)
    assert isinstance(faiss.downcast_index(faiss_index.build_index(ids[:499], vectors[:499], 32).index), faiss.IndexFlatIP)
    faiss_index.save_index(tmp_path, index, faiss_index.Manifest(MODEL, 32, faiss_index.METRIC, 2000, 1, ""))
    loaded, _ = faiss_index.load_index(tmp_path)
    assert faiss.downcast_index(loaded.index).hnsw.efSearch == faiss_index.HNSW_EF_SEARCH  # saved with it
    queries = vectors[:50] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    _, got = loaded.search(queries, 10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert np.mean([len(set(g) & set(ids[e])) / 10 for g, e in zip(got, exact)]) >= 0.95
    assert (got[:, 0] == ids[:50]).all()
