"""Read a .safetensors header without loading tensors, and refuse lying or hostile headers.

Why not ``safetensors.safe_open``: it maps the whole file and its errors do not say which rule a
broken file breaks; an ingest of thousands of files needs one bounded read and a precise reason.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from registry.errors import InvalidInput

# safetensors itself refuses headers over 100 MB; a LoRA header is rarely over 1 MB.
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_RANK = 8  # dimensions of one tensor
MAX_DIM = 2**40  # one dimension; with a zero elsewhere in the shape nothing else bounds it

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")  # pickle protocols, zip (torch.save)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class SafetensorsHeader:
    path: str
    size: int
    header_len: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)

    def read_scalar(self, key: str) -> float | None:
        """Read one scalar tensor (e.g. a kohya ``.alpha``) straight from its bytes; never unpickles."""
        info = self.tensors.get(key)
        if info is None or info.end - info.begin not in (2, 4, 8):
            return None
        fmt = {"F16": "<e", "F32": "<f", "F64": "<d", "BF16": None}.get(info.dtype, "")
        with open(self.path, "rb") as fh:
            fh.seek(8 + self.header_len + info.begin)
            raw = fh.read(info.end - info.begin)
        if info.dtype == "BF16":
            return struct.unpack("<f", b"\x00\x00" + raw)[0]
        if not fmt or len(raw) != struct.calcsize(fmt):
            return None
        return float(struct.unpack(fmt, raw)[0])


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def looks_like_pickle(head: bytes) -> bool:
    return head.startswith(PICKLE_MAGIC)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate the header of ``path``. Raises InvalidInput naming the file and the problem."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        return _parse(path, fh, size)


def _parse(path: str, fh: BinaryIO, size: int) -> SafetensorsHeader:
    def bad(reason: str) -> InvalidInput:
        return InvalidInput(f"{path}: {reason}")

    head = fh.read(8)
    if len(head) < 8:
        raise bad(f"truncated: {size} bytes, shorter than the 8-byte header length")
    if looks_like_pickle(head):
        raise bad("a pickle/torch.save file with a .safetensors name; refused, never unpickled")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise bad(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit (not a safetensors file?)")
    if n > size - 8:
        raise bad(f"header length {n} runs past the end of the {size}-byte file (truncated or not safetensors)")
    raw = fh.read(n)
    if len(raw) != n:
        raise bad("truncated while reading the header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("header is not UTF-8 (corrupt file)") from None
    except RecursionError:
        raise bad("header JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise bad(f"header is not valid JSON ({exc.msg} at byte {exc.pos})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")

    meta_raw = header.pop("__metadata__", None) or {}
    if not isinstance(meta_raw, dict):
        raise bad("__metadata__ is not a JSON object")
    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta_raw.items()}

    data_len = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for key, info in header.items():
        if len(key) > 1024:
            raise bad(f"tensor name of {len(key)} characters ({_short(key)}) is too long")
        if not isinstance(info, dict):
            raise bad(f"tensor {key!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise bad(f"tensor {key!r}: unknown dtype {_short(dtype)}")
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < MAX_DIM for d in shape) or len(shape) > MAX_RANK:
            raise bad(f"tensor {key!r}: shape {_short(shape)} is not a list of at most {MAX_RANK} non-negative integers below 2**40")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise bad(f"tensor {key!r}: data_offsets {_short(offsets)} are invalid")
        numel = 1
        for d in shape:
            numel *= d
        if offsets[1] - offsets[0] != numel * DTYPE_SIZES[dtype]:
            raise bad(f"tensor {key!r}: {offsets[1] - offsets[0]} bytes do not fit {dtype} {shape}")
        if offsets[1] > data_len:
            raise bad(f"truncated: tensor {key!r} ends at byte {offsets[1]} of a {data_len}-byte data section")
        tensors[key] = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])

    spans = sorted((t.begin, t.end, k) for k, t in tensors.items() if t.end > t.begin)
    for (_b0, e0, k0), (b1, _e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise bad(f"tensors {k0!r} and {k1!r} overlap in the data section")
    return SafetensorsHeader(path=path, size=size, header_len=n, tensors=tensors, metadata=metadata)
