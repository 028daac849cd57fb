"""Hypothesis strategies for hostile and broken input, and the checks each case must pass.

Shared by tests/registry/test_fuzz.py (a few seconds per kind) and benchmarks/fuzz_report.py (a bigger
campaign). A check returns an outcome label and raises only when the code under test misbehaves: an
exception other than the domain error, an unpickled payload, a good entry lost.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import tracemalloc
from pathlib import Path

from hypothesis import strategies as st

from registry.civitai import ModelRecord, NotARecord, parse_any
from registry.errors import InvalidInput
from registry.formats import detect_format
from registry.safetensors_header import DTYPE_SIZES, read_header

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
hostile_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)  # NUL, lone surrogates, RTL marks...


def _write_safetensors(path: Path, header: bytes, data: bytes, length: int | None = None) -> None:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)


def check_header_file(path: Path) -> str:
    """read_header refuses with InvalidInput or returns a header whose every tensor lies inside the
    data section without overlap; detect_format then never raises."""
    try:
        header = read_header(path)
    except InvalidInput as exc:
        assert str(exc).startswith(str(path)), exc
        return "refused"
    data_len = header.size - 8 - header.header_len
    spans = sorted((t.begin, t.end) for t in header.tensors.values() if t.end > t.begin)
    assert all(0 <= b <= e <= data_len for b, e in spans)
    assert all(e0 <= b1 for (_, e0), (b1, _) in zip(spans, spans[1:]))
    detect_format(header)
    return "parsed"


# -- safetensors headers ------------------------------------------------------------------------
random_files = st.binary(max_size=600)


def check_random_bytes(directory: Path, data: bytes) -> str:
    path = directory / "random.safetensors"
    path.write_bytes(data)
    return check_header_file(path)


header_lengths = st.one_of(st.integers(0, 2**64 - 1), st.integers(2**26, 2**40), st.integers(0, 300))


def check_header_length(directory: Path, length: int, body: bytes) -> str:
    """A lying length: refused without reading (allocating) more than the file holds."""
    path = directory / "length.safetensors"
    _write_safetensors(path, body, b"", length=length)
    tracemalloc.start()
    try:
        outcome = check_header_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak} bytes allocated for a {path.stat().st_size}-byte file"
    return outcome


nesting = st.tuples(st.integers(100, 200_000), st.sampled_from(["[", '{"a":', '{"__metadata__":', '{"t":{"shape":']))


def check_nesting_bomb(directory: Path, depth: int, opener: str) -> str:
    closer = {"[": "]", '{"a":': "}", '{"__metadata__":': "}", '{"t":{"shape":': "}}"}[opener]
    body = (opener * depth + "1" + closer * depth).encode()
    path = directory / "bomb.safetensors"
    _write_safetensors(path, body, b"")
    return check_header_file(path)


dtypes = st.sampled_from(sorted(DTYPE_SIZES)) | json_values
shapes = st.lists(st.integers(0, 6), max_size=3) | st.lists(st.integers(-(2**64), 2**64), max_size=4) | json_values
offsets = st.lists(st.integers(0, 64), min_size=2, max_size=2) | st.lists(st.integers(-(2**64), 2**64), max_size=3) | json_values
tensor_names = st.sampled_from([
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.hada_w1_a",
]) | hostile_text  # fmt: skip
tensor_entries = st.fixed_dictionaries({"dtype": dtypes, "shape": shapes, "data_offsets": offsets}) | json_values
headers = st.fixed_dictionaries(
    {}, optional={"__metadata__": st.dictionaries(hostile_text, hostile_text | json_values, max_size=4) | json_values}
).flatmap(lambda meta: st.dictionaries(tensor_names, tensor_entries, max_size=6).map(lambda t: {**t, **meta}))


def check_structured_header(directory: Path, header: dict, data_len: int) -> str:
    """Wrong dtypes and shapes, offsets that overlap or point outside, hostile names and metadata."""
    path = directory / "structured.safetensors"
    _write_safetensors(path, json.dumps(header).encode("utf-8", "surrogatepass"), b"\x00" * data_len)
    return check_header_file(path)


# -- sidecars -----------------------------------------------------------------------------------
def civitai_template() -> dict:
    return {
        "id": 1, "name": "Model", "type": "LORA", "description": "<p>d</p>", "nsfw": False,
        "creator": {"username": "u"}, "tags": ["a", "b"],
        "modelVersions": [{
            "id": 2, "modelId": 1, "name": "v1", "baseModel": "SD 1.5", "trainedWords": ["w1", "w2"],
            "createdAt": "2024-01-01T00:00:00Z", "publishedAt": "2024-01-02T00:00:00Z", "description": "x",
            "files": [{"id": 3, "name": "f.safetensors", "type": "Model", "primary": True, "sizeKB": 1.5,
                       "metadata": {"format": "SafeTensor"}, "hashes": {"SHA256": "AB" * 32, "AutoV2": "AB" * 5}}],
        }],
    }  # fmt: skip


def field_paths(value, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += field_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += field_paths(v, prefix + (i,))
    return out


SIDECAR_TEMPLATES = {
    "civitai-model": civitai_template(),
    "civitai-version": {**civitai_template()["modelVersions"][0], "model": {"name": "M", "type": "LORA", "tags": ["t"]}},
    "cm-info": {"ModelName": "M", "ModelId": 1, "VersionId": 2, "VersionName": "v", "BaseModel": "SDXL 1.0",
                "TrainedWords": ["w"], "Hashes": {"SHA256": "ab" * 32}, "FileName": "f.safetensors", "Tags": ["t"]},
    "lora-manager": {"file_name": "f", "model_name": "M", "sha256": "ab" * 32, "base_model": "SD 1.5", "size": 10,
                     "tags": ["t"], "modelDescription": "d", "civitai": {"id": 2, "modelId": 1, "trainedWords": ["w"]}},
    "a1111-card": {"description": "d", "sd version": "SD1", "activation text": "w1, w2", "notes": "n"},
}  # fmt: skip


@st.composite
def mutated_sidecars(draw) -> object:
    """A known sidecar with values of the wrong type or shape put into some of its fields (any
    field, nested ones too), or a document of the wrong shape altogether."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    doc = json.loads(json.dumps(SIDECAR_TEMPLATES[draw(st.sampled_from(sorted(SIDECAR_TEMPLATES)))]))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in field_paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = draw(json_values | hostile_text)
    return doc


def check_sidecar(doc: object) -> str:
    """parse_any returns a well-typed record or raises NotARecord; nothing else."""
    try:
        kind, record = parse_any(doc, "fallback")
    except NotARecord:
        return "not a record"
    assert isinstance(record, ModelRecord) and isinstance(record.name, str) and record.name
    assert record.civitai_id is None or isinstance(record.civitai_id, int)
    for v in record.versions:
        assert all(isinstance(w, str) and w for w in v.trained_words)
        assert v.base_model is None or (isinstance(v.base_model, str) and len(v.base_model) <= 64)
        for f in v.files:
            assert isinstance(f.name, str) and (f.size_bytes is None or isinstance(f.size_bytes, int))
    for text in [record.name, record.description or "", record.creator or "", *record.tags]:
        assert "\x00" not in text
        text.encode("utf-8")  # storable: no lone surrogates
    return kind


# -- whole dumps --------------------------------------------------------------------------------
file_names = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=40).filter(lambda s: s not in (".", ".."))
raw_names = st.binary(min_size=1, max_size=30).filter(lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b".."))
PICKLE_EXTS = [".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".pkl", ".json", ".civitai.info"]


class Boom:
    """Touches a marker file if anything ever unpickles it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def pickle_bytes(marker: Path, protocol: int) -> bytes:
    return pickle.dumps(Boom(str(marker)), protocol=protocol)


def hostile_dump_cases():
    """(kind, strategy) of one hostile item to drop into a dump beside good files."""
    return st.one_of(
        st.tuples(st.just("header-bytes"), random_files),
        st.tuples(st.just("header-structured"), st.tuples(headers, st.integers(0, 80))),
        st.tuples(st.just("sidecar"), mutated_sidecars()),
        st.tuples(st.just("file-name"), file_names),
        st.tuples(st.just("raw-file-name"), raw_names),
        st.tuples(st.just("pickle"), st.tuples(st.sampled_from(PICKLE_EXTS), st.integers(2, 5))),
        st.tuples(st.just("symlink-out"), file_names),
    )


def plant(dump: Path, outside: Path, marker: Path, kind: str, value, good_adapter: Path) -> list[str]:
    """Put one hostile item in ``dump``; returns the paths the ingest must report or store."""
    hostile = dump / "hostile"
    hostile.mkdir(exist_ok=True)
    if kind == "header-bytes":
        p = hostile / "h.safetensors"
        p.write_bytes(value)
    elif kind == "header-structured":
        header, data_len = value
        p = hostile / "s.safetensors"
        _write_safetensors(p, json.dumps(header).encode("utf-8", "surrogatepass"), b"\x00" * data_len)
    elif kind == "sidecar":  # beside a real adapter: the adapter must land whatever the sidecar says
        p = hostile / "with_sidecar.safetensors"
        p.write_bytes(good_adapter.read_bytes()[:-1] + b"\x03")
        (hostile / "with_sidecar.civitai.json").write_text(json.dumps(value), encoding="utf-8", errors="surrogatepass")
    elif kind == "file-name":
        p = hostile / (value + ".safetensors")
        p.write_bytes(good_adapter.read_bytes()[:-1] + b"\x01")  # same tensors, other bytes: no duplicate
    elif kind == "raw-file-name":
        raw = os.path.join(os.fsencode(hostile), value + b".safetensors")
        with open(raw, "wb") as fh:
            fh.write(good_adapter.read_bytes()[:-1] + b"\x02")
        return [os.fsdecode(raw)]
    elif kind == "pickle":
        ext, protocol = value
        p = hostile / f"evil{ext}"
        p.write_bytes(pickle_bytes(marker, protocol))
    elif kind == "symlink-out":
        target = outside / "target.safetensors"
        target.write_bytes(good_adapter.read_bytes())
        p = hostile / (value + ".safetensors")
        p.symlink_to(target)
    else:
        raise ValueError(kind)
    return [str(p)]
