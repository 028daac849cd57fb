"""Format and base-family recognition on real files, and refusal of broken or hostile headers."""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest

from registry.errors import InvalidInput
from registry.formats import detect_format
from registry.safetensors_header import read_header
from tests.registry.loras import kohya_lora

# Every real fixture file: (format, base family, rank, unet modules, te modules) or None = refused.
EXPECTED = {
    "analog_svd_rank4.safetensors": ("cloneofsimo", "sd1", 4, 144, 48),
    "diffusers_attnprocs_sd15.safetensors": ("diffusers-attnproc", "sd1", 4, 128, 0),
    "diffusers_sd15_text_to_image_lora.safetensors": ("diffusers", "sd1", 4, 128, 0),
    "diffusers_sd2_bf16.safetensors": ("diffusers", "sd2", 4, 128, 0),
    "diffusers_sd2_processor_hybrid.safetensors": ("diffusers-attnproc", "sd2", 4, 128, 0),
    "flux_aitoolkit_lora.safetensors": ("peft", "flux", 16, 4, 0),
    "lora_disney.safetensors": ("cloneofsimo", "sd1", 1, 144, 48),
    "lora_disney_inpainting.safetensors": ("cloneofsimo", "sd1", 1, 144, 48),
    "malformed_kohya_like.safetensors": None,
    "smart_falcon_16_lokr.safetensors": ("lycoris-lokr", "sd1", 16, 278, 72),
    "smart_falcon_4_lokr.safetensors": ("lycoris-lokr", "sd1", 4, 278, 72),
    "smart_falcon_8_lokr.safetensors": ("lycoris-lokr", "sd1", 8, 278, 72),
}


def test_every_fixture_file_is_known(shared: Path) -> None:
    assert sorted(p.name for p in (shared / "fixtures/lora-files").iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_format_and_family(shared: Path, name: str) -> None:
    info = detect_format(read_header(shared / "fixtures/lora-files" / name))
    expected = EXPECTED[name]
    if expected is None:
        assert not info.usable
        assert "broken kohya conversion" in info.reason
        return
    assert info.usable, info.reason
    assert (info.format, info.base_family, info.rank, info.unet_modules, info.te_modules) == expected


def test_shapes_win_over_lying_metadata(shared: Path) -> None:
    info = detect_format(read_header(shared / "fixtures/lora-files/flux_aitoolkit_lora.safetensors"))
    assert info.base_family == "flux"
    assert any("metadata claims sd1" in note for note in info.notes)


def test_lokr_alpha_read_from_metadata(shared: Path) -> None:
    info = detect_format(read_header(shared / "fixtures/lora-files/smart_falcon_8_lokr.safetensors"))
    assert info.alpha == 8.0


@pytest.mark.parametrize(("context", "family"), [(768, "sd1"), (1024, "sd2"), (2048, "sdxl")])
def test_family_from_cross_attention_width(tmp_path: Path, context: int, family: str) -> None:
    path = kohya_lora(tmp_path / "x.safetensors", context=context, te=False, metadata={"ss_base_model_version": "sd_v1"})
    info = detect_format(read_header(path))
    assert info.format == "kohya-lora"
    assert info.base_family == family
    assert info.rank == 4 and info.alpha == 4.0  # alpha read from the tensor bytes


def _write(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "length", "reason"),
    [
        (b"", b"", None, "header is not valid JSON"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "truncated"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10**6, "runs past the end"),
        ({}, b"", 2**62, "exceeds"),
        (b"[" * 100_000 + b"]" * 100_000, b"", None, "nested too deeply"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlap"),
        ({"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "do not fit"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "non-negative"),
        ({"__metadata__": [1, 2]}, b"", None, "__metadata__"),
        ([1, 2, 3], b"", None, "not a JSON object"),
    ],
)
def test_hostile_headers_are_refused_with_reason(tmp_path: Path, header, data, length, reason) -> None:
    path = _write(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(InvalidInput) as exc:
        read_header(path)
    assert str(path) in str(exc.value)
    assert reason in str(exc.value)


def test_short_file(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(InvalidInput, match="truncated"):
        read_header(path)


def test_pickle_named_safetensors_is_refused_unopened(tmp_path: Path) -> None:
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(InvalidInput, match="never unpickled"):
        read_header(path)
