"""Civitai records and the sidecars that hold them, parsed into plain dataclasses.

Civitai's shapes drift (2023 vs 2025 responses, third-party sidecars), and any field may be null or of
the wrong type, so every accessor here is defensive: a bad field is dropped, never fatal.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

from registry.text import clean_text, html_to_text, normalize_word


@dataclass
class FileRecord:
    name: str
    civitai_id: int | None = None
    kind: str | None = None  # Model, Text Encoder, Training Data, ...
    format: str | None = None  # SafeTensor, PickleTensor, Other
    size_bytes: int | None = None
    sha256: str | None = None
    autov2: str | None = None
    primary: bool = False


@dataclass
class VersionRecord:
    civitai_id: int | None
    name: str | None
    base_model: str | None
    trained_words: list[str] = field(default_factory=list)
    description: str | None = None
    published_at: dt.datetime | None = None
    files: list[FileRecord] = field(default_factory=list)
    # Civitai's counts when the record was taken: what people who keep thousands of LoRAs sort by.
    downloads: int | None = None
    rating: float | None = None  # 0-5
    rating_count: int | None = None


@dataclass
class ModelRecord:
    civitai_id: int | None
    name: str
    type: str | None = None
    description: str | None = None
    creator: str | None = None
    nsfw: bool = False
    tags: list[str] = field(default_factory=list)
    versions: list[VersionRecord] = field(default_factory=list)


class NotARecord(ValueError):
    """The JSON is valid but is no Civitai record or sidecar we know."""


def _str(value: Any, limit: int = 100_000) -> str | None:
    if isinstance(value, str) and value.strip():
        return clean_text(value.strip())[:limit].strip() or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():  # "²".isdigit() is True
        return _int(int(value.strip()))
    if isinstance(value, float) and value.is_integer():
        return _int(int(value))
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    n = _int(value)
    return n if n is not None and n >= 0 else None


def _bool(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _date(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _hex(value: Any, length: int) -> str | None:
    text = _str(value)
    if text and re.fullmatch(r"[0-9a-fA-F]+", text) and len(text) >= length:
        return text[:length].lower()
    return None


def split_trigger_words(values: Any) -> list[str]:
    """trainedWords entries are sometimes one comma-joined string; split, strip and de-duplicate them."""
    if isinstance(values, str):
        values = [values]
    words: list[str] = []
    seen: set[str] = set()
    for value in _list(values):
        text = _str(value, 512)
        if not text:
            continue
        for part in re.split(r"[,\n]", text):
            part = part.strip()
            norm = normalize_word(part)
            if norm and norm not in seen:
                seen.add(norm)
                words.append(part)
    return words


def normalize_base_model(base_model: str | None) -> str:
    """Civitai's base-model name to the family that decides which pipeline a LoRA loads into."""
    name = (base_model or "").lower()
    if re.match(r"sd 1\.|sd1", name):
        return "sd1"
    if re.match(r"sd 2\.|sd2", name):
        return "sd2"
    if name.startswith(("sdxl", "pony", "illustrious", "noobai", "playground v2")):
        return "sdxl"
    if name.startswith("flux.1"):
        return "flux"
    return "other"


def parse_file(raw: Any) -> FileRecord | None:
    d = _dict(raw)
    name = _str(d.get("name"), 1024)
    if not name:
        return None
    hashes = {str(k).lower(): v for k, v in _dict(d.get("hashes")).items()}
    sha256 = _hex(hashes.get("sha256"), 64)
    size_kb = d.get("sizeKB")
    size = (
        int(round(size_kb * 1024))
        if isinstance(size_kb, (int, float)) and not isinstance(size_kb, bool) and 0 <= size_kb < 2**50
        else None
    )  # JSON's Infinity and NaN, negative or absurd sizes: unknown
    return FileRecord(
        name=name,
        civitai_id=_int(d.get("id")),
        kind=_str(d.get("type"), 32),
        format=_str(_dict(d.get("metadata")).get("format"), 32),
        size_bytes=size,
        sha256=sha256,
        autov2=_hex(hashes.get("autov2"), 10) or (sha256[:10] if sha256 else None),
        primary=_bool(d.get("primary")),
    )


def parse_version(raw: Any) -> VersionRecord:
    d = _dict(raw)
    stats = _dict(d.get("stats"))
    return VersionRecord(
        civitai_id=_int(d.get("id")),
        name=_str(d.get("name"), 512),
        base_model=_str(d.get("baseModel"), 64),
        trained_words=split_trigger_words(d.get("trainedWords")),
        description=html_to_text(_str(d.get("description"))),
        published_at=_date(d.get("publishedAt")) or _date(d.get("createdAt")),
        files=[f for f in map(parse_file, _list(d.get("files"))) if f],
        downloads=_count(stats.get("downloadCount")),
        rating=_float(stats.get("rating")) if _count(stats.get("ratingCount")) else None,  # 0 ratings: no rating
        rating_count=_count(stats.get("ratingCount")),
    )


def parse_model_record(d: dict[str, Any]) -> ModelRecord:
    """A Civitai ``/api/v1/models/{id}`` response."""
    name = _str(d.get("name"), 512)
    if not name:
        raise NotARecord("Civitai model record without a name")
    return ModelRecord(
        civitai_id=_int(d.get("id")),
        name=name,
        type=_str(d.get("type"), 32),
        description=html_to_text(_str(d.get("description"))),
        creator=_str(_dict(d.get("creator")).get("username"), 256),
        nsfw=_bool(d.get("nsfw")),
        tags=[t for t in (_str(x, 128) for x in _list(d.get("tags"))) if t],
        versions=[parse_version(v) for v in _list(d.get("modelVersions")) if isinstance(v, dict)],
    )


def parse_version_record(d: dict[str, Any]) -> ModelRecord:
    """A ``/api/v1/model-versions/{id}`` response, the shape of the ``.civitai.info`` sidecar."""
    model = _dict(d.get("model"))
    name = _str(model.get("name"), 512) or _str(d.get("name"), 512)
    if not name:
        raise NotARecord("Civitai version record without a model name")
    tags = model.get("tags") if isinstance(model.get("tags"), list) else d.get("tags")
    return ModelRecord(
        civitai_id=_int(d.get("modelId")),
        name=name,
        type=_str(model.get("type"), 32),
        description=html_to_text(_str(model.get("description"))),
        creator=_str(_dict(d.get("creator")).get("username"), 256),
        nsfw=_bool(model.get("nsfw")),
        tags=[t for t in (_str(x, 128) for x in _list(tags)) if t],
        versions=[parse_version(d)],
    )


def parse_cm_info(d: dict[str, Any]) -> ModelRecord:
    """Stability Matrix's ``<name>.cm-info.json``."""
    name = _str(d.get("ModelName"), 512)
    if not name:
        raise NotARecord("cm-info sidecar without ModelName")
    hashes = {str(k).lower(): v for k, v in _dict(d.get("Hashes")).items()}
    sha = _hex(hashes.get("sha256"), 64)
    file_name = _str(d.get("FileName"), 1024)
    files = [FileRecord(name=file_name, sha256=sha, autov2=sha[:10] if sha else None, primary=True)] if file_name else []
    return ModelRecord(
        civitai_id=_int(d.get("ModelId")),
        name=name,
        type=_str(d.get("ModelType"), 32),
        description=html_to_text(_str(d.get("ModelDescription"))),
        nsfw=_bool(d.get("Nsfw")),
        tags=[t for t in (_str(x, 128) for x in _list(d.get("Tags"))) if t],
        versions=[
            VersionRecord(
                civitai_id=_int(d.get("VersionId")),
                name=_str(d.get("VersionName"), 512),
                base_model=_str(d.get("BaseModel"), 64),
                trained_words=split_trigger_words(d.get("TrainedWords")),
                description=html_to_text(_str(d.get("VersionDescription"))),
                files=files,
            )
        ],
    )


def parse_lora_manager(d: dict[str, Any]) -> ModelRecord:
    """ComfyUI-Lora-Manager's ``<name>.metadata.json``: local facts plus the Civitai version record."""
    civitai = _dict(d.get("civitai"))
    if civitai.get("id") is not None or civitai.get("modelId") is not None:
        record = parse_version_record({**civitai, "model": {"name": d.get("model_name"), **_dict(civitai.get("model"))}})
    else:
        name = _str(d.get("model_name"), 512) or _str(d.get("file_name"), 512)
        if not name:
            raise NotARecord("Lora-Manager sidecar without a model name")
        record = ModelRecord(civitai_id=None, name=name, versions=[VersionRecord(None, None, _str(d.get("base_model"), 64))])
    version = record.versions[0]
    if not version.base_model:
        version.base_model = _str(d.get("base_model"), 64)
    if not record.description:
        record.description = html_to_text(_str(d.get("modelDescription")))
    if not record.tags:
        record.tags = [t for t in (_str(x, 128) for x in _list(d.get("tags"))) if t]
    sha = _hex(d.get("sha256"), 64)
    file_name = _str(d.get("file_name"), 1024)
    if sha and not any(f.sha256 == sha for f in version.files):
        size = _int(d.get("size"))
        version.files.append(FileRecord(name=file_name or "", sha256=sha, autov2=sha[:10], size_bytes=size, primary=True))
    return record


def parse_a1111_card(d: dict[str, Any], fallback_name: str) -> ModelRecord:
    """A1111's per-LoRA ``<name>.json`` card: description, activation text, sd version."""
    sd_version = (_str(d.get("sd version")) or "").lower()
    base = {"sd1": "SD 1.5", "sd2": "SD 2.1", "sdxl": "SDXL 1.0"}.get(sd_version)
    return ModelRecord(
        civitai_id=None,
        name=fallback_name,
        description=html_to_text(_str(d.get("description"))) or _str(d.get("notes")),
        versions=[VersionRecord(None, None, base, split_trigger_words(d.get("activation text")))],
    )


A1111_KEYS = {"activation text", "sd version", "preferred weight", "negative text", "notes", "description"}


def parse_any(d: Any, fallback_name: str) -> tuple[str, ModelRecord]:
    """Recognise which kind of record a JSON document is, and parse it. Raises NotARecord."""
    if not isinstance(d, dict):
        raise NotARecord(f"expected a JSON object, got {type(d).__name__}")
    if "modelVersions" in d:
        return "civitai-model", parse_model_record(d)
    if "modelId" in d and any(k in d for k in ("files", "trainedWords", "baseModel")):
        return "civitai-version", parse_version_record(d)
    if "ModelName" in d or "VersionId" in d:
        return "cm-info", parse_cm_info(d)
    if "civitai" in d or ("sha256" in d and "file_name" in d):
        return "lora-manager", parse_lora_manager(d)
    if A1111_KEYS & set(d):
        return "a1111-card", parse_a1111_card(d, fallback_name)
    raise NotARecord("not a Civitai record nor a known sidecar (keys: " + ", ".join(sorted(map(str, d))[:8]) + ")")
