"""Parsing Civitai records and third-party sidecars, including the field-level quirks of real data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.civitai import NotARecord, normalize_base_model, parse_any, split_trigger_words
from registry.text import html_to_text


def load(shared: Path, name: str) -> dict:
    return json.loads((shared / "fixtures/civitai" / name).read_text())


def test_model_record_with_versions_files_and_hashes(shared: Path) -> None:
    kind, rec = parse_any(load(shared, "api-records/civitai_model_58390.json"), "x")
    assert kind == "civitai-model"
    assert (rec.civitai_id, rec.creator, rec.nsfw) == (58390, "CyberAIchemist", False)
    f = rec.versions[0].files[0]
    assert f.name == "add_detail.safetensors"
    assert f.sha256 == "47aaaf0d2945ca937151d61304946dd229b3f072140b85484bc93e38f2a6e2f7"
    assert f.autov2 == "47aaaf0d29"
    assert f.size_bytes == round(36973.8046875 * 1024)
    assert "<" not in (rec.description or "")


def test_archived_model_without_description_or_files(shared: Path) -> None:
    _, rec = parse_any(load(shared, "api-records/civitai_model_35484.json"), "x")
    assert rec.description is None
    assert all(not v.files for v in rec.versions)


def test_twelve_versions_and_text_encoder_file(shared: Path) -> None:
    _, rec = parse_any(load(shared, "api-records/civitai_model_5742.json"), "x")
    assert len(rec.versions) == 12
    _, vhs = parse_any(load(shared, "api-records/civitai_model_3679.json"), "x")
    assert "Text Encoder" in {f.kind for v in vhs.versions for f in v.files}


def test_pickle_files_are_marked(shared: Path) -> None:
    _, rec = parse_any(load(shared, "api-records/civitai_model_31574.json"), "x")
    assert "PickleTensor" in {f.format for v in rec.versions for f in v.files}


def test_version_record_2025_shape(shared: Path) -> None:
    kind, rec = parse_any(load(shared, "api-records-2025/model_version_1255556_flux_lora.json"), "x")
    assert kind == "civitai-version"
    assert (rec.civitai_id, rec.name) == (1117241, "Enchanted Whimsy style (Flux)")
    assert rec.versions[0].trained_words == ["in the style of ppWhimsy"]
    assert normalize_base_model(rec.versions[0].base_model) == "flux"


def test_enums_file_is_not_a_record(shared: Path) -> None:
    with pytest.raises(NotARecord):
        parse_any(load(shared, "api-records-2025/civitai_enums.json"), "x")


def test_comma_joined_trigger_words_are_split() -> None:
    assert split_trigger_words(["a, b,c", "B", "  ", None, 3]) == ["a", "b", "c", "3"]


@pytest.mark.parametrize(
    ("name", "family"),
    [("SD 1.5", "sd1"), ("SD 1.4", "sd1"), ("SD 2.1 768", "sd2"), ("SDXL 1.0", "sdxl"), ("Pony", "sdxl"),
     ("Illustrious", "sdxl"), ("Flux.1 D", "flux"), ("Other", "other"), (None, "other"), ("Wan Video", "other")],
)  # fmt: skip
def test_base_model_families(name: str | None, family: str) -> None:
    assert normalize_base_model(name) == family


def test_every_field_of_the_wrong_type_is_dropped_not_fatal() -> None:
    record = {
        "id": "12", "name": "ok", "type": 5, "description": ["x"], "creator": "nobody", "nsfw": "yes",
        "tags": "tag", "modelVersions": [{"id": {}, "trainedWords": 7, "files": [{"name": 3}, {"name": "f.safetensors", "sizeKB": "9", "hashes": []}]}, 4],
    }  # fmt: skip
    kind, rec = parse_any(record, "x")
    assert rec.civitai_id == 12 and rec.tags == [] and rec.creator is None
    assert [f.name for f in rec.versions[0].files] == ["3", "f.safetensors"]


def test_sidecars_of_other_tools() -> None:
    kind, rec = parse_any({"ModelName": "M", "ModelId": 5, "VersionId": 6, "BaseModel": "SDXL 1.0",
                           "TrainedWords": ["tw"], "FileName": "m.safetensors", "Hashes": {"SHA256": "ab" * 32}}, "x")  # fmt: skip
    assert kind == "cm-info" and rec.versions[0].files[0].sha256 == "ab" * 32
    kind, rec = parse_any({"file_name": "m", "model_name": "M", "sha256": "cd" * 32, "base_model": "SD 1.5",
                           "civitai": {"id": 9, "modelId": 8, "trainedWords": ["w"], "files": []}}, "x")  # fmt: skip
    assert kind == "lora-manager" and rec.civitai_id == 8 and rec.versions[0].files[0].sha256 == "cd" * 32
    kind, rec = parse_any({"activation text": "kiki, ring", "sd version": "SD1", "description": "d"}, "stem")
    assert kind == "a1111-card" and rec.name == "stem" and rec.versions[0].trained_words == ["kiki", "ring"]


def test_html_to_text_keeps_words_and_paragraphs() -> None:
    assert html_to_text("<p>Hello <b>big</b>&amp;bold</p><p>world</p>") == "Hello big&bold\n\nworld"


@pytest.mark.parametrize("raw", ["²", "٣", " 12 "])
def test_numeric_looking_ids_that_int_refuses_are_dropped_not_raised(raw: str) -> None:
    # Found by the sidecar fuzzer: "²".isdigit() is True, but int("²") raises.
    kind, record = parse_any({"id": raw, "name": "x", "modelVersions": []}, "fallback")
    assert kind == "civitai-model"
    assert record.civitai_id == (12 if raw.strip() == "12" else None)


def test_version_stats_are_read_and_bad_ones_dropped(shared: Path) -> None:
    _, rec = parse_any(load(shared, "api-records/civitai_model_58390.json"), "x")
    v = rec.versions[0]
    assert (v.downloads, v.rating, v.rating_count) == (129209, 4.96, 279)
    bad = [{"downloadCount": -3, "rating": "5", "ratingCount": True},  # wrong types, a negative count
           {"downloadCount": 10, "rating": 4.0, "ratingCount": 0},  # no ratings: no rating
           {"rating": float("nan"), "ratingCount": 2}, "stats"]  # fmt: skip
    versions = [{"id": i, "name": "v", "stats": s} for i, s in enumerate(bad)]
    _, rec = parse_any({"id": 1, "name": "m", "modelVersions": versions}, "x")
    assert [(v.downloads, v.rating, v.rating_count) for v in rec.versions] == [
        (None, None, None), (10, None, 0), (None, None, 2), (None, None, None)]
