"""Sidecar JSON: reading it safely, merging several sidecars of one file, and finding which of a
record's files a local file is."""
from __future__ import annotations

import json
import os
from typing import Any

from registry.civitai import FileRecord, ModelRecord, VersionRecord
from registry.errors import InvalidInput
from registry.text import clean_text

MAX_SIDECAR_BYTES = 32 * 1024 * 1024
MAX_METADATA_VALUE = 64 * 1024
# Which sidecar leads when a file has several: Civitai's own records first.
_PRECEDENCE = {"civitai-model": 0, "civitai-version": 1, "lora-manager": 2, "cm-info": 3, "a1111-card": 4}


def read_json(path: str) -> Any:
    """A sidecar's JSON; InvalidInput naming the file and the problem when it cannot be used."""
    size = os.path.getsize(path)
    if size > MAX_SIDECAR_BYTES:
        raise InvalidInput(f"{path}: {size} bytes is too large for a metadata sidecar")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise InvalidInput(f"{path}: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: broken JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def clean_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """A safetensors header's metadata fit to store: no control characters, no huge values."""
    out = {}
    for key, value in metadata.items():
        if len(value) > MAX_METADATA_VALUE:  # thumbnails, huge tag-frequency tables
            value = f"<omitted: {len(value)} characters>"
        out[clean_text(key)[:1024]] = clean_text(value)
    return out


def merge_records(records: list[tuple[str, ModelRecord]]) -> ModelRecord | None:
    """Civitai records lead; an A1111 card or Lora-Manager file only fills in what they lack."""
    if not records:
        return None
    records = sorted(records, key=lambda kr: _PRECEDENCE.get(kr[0], 9))
    main = records[0][1]
    for _kind, extra in records[1:]:
        if not main.description and extra.description:
            main.description = extra.description
        if not main.tags and extra.tags:
            main.tags = extra.tags
        if main.civitai_id is None and extra.civitai_id is not None:
            main.civitai_id = extra.civitai_id
        if extra.versions and main.versions:
            target, source = main.versions[0], extra.versions[0]
            for word in source.trained_words:
                if word not in target.trained_words:
                    target.trained_words.append(word)
            if not target.base_model:
                target.base_model = source.base_model
            for frec in source.files:
                if frec.sha256 and not any(f.sha256 == frec.sha256 for v in main.versions for f in v.files):
                    target.files.append(frec)
    return main


def match_file(record: ModelRecord, path: str, size: int, sha256: str | None) -> tuple[VersionRecord, FileRecord] | None:
    """Which of the record's files is this one: by hash, then name, then size, then the only model file."""
    pairs = [(v, f) for v in record.versions for f in v.files]
    name = os.path.basename(path).lower()
    for test in (
        lambda f: sha256 is not None and f.sha256 == sha256,
        lambda f: f.name.lower() == name,
        lambda f: f.size_bytes is not None and abs(f.size_bytes - size) < 1024 and f.kind in (None, "Model"),
    ):
        found = [(v, f) for v, f in pairs if test(f)]
        if len(found) == 1 or (found and sha256):  # with the bytes hashed, the first match is exact
            return found[0]
    model_files = [(v, f) for v, f in pairs if f.kind in (None, "Model")]
    if len(model_files) == 1:
        return model_files[0]
    return None
