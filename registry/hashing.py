"""File hashes as Civitai and A1111 name them, read in chunks (LoRA files run to hundreds of MB).

SHA256 is the whole file; AutoV2 its first 10 hex digits; AutoV3 (A1111's "Lora hashes") the
SHA256 of the tensor data after a safetensors header, 12 hex digits.
"""
from __future__ import annotations

import hashlib
import struct

CHUNK = 4 * 1024 * 1024


def sha256_file(path: str) -> str:
    """SHA256 of the file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def autov2(sha256: str) -> str:
    return sha256[:10]


def safetensors_hashes(path: str) -> tuple[str, str]:
    """(SHA256 of the whole file, AutoV3) in one read."""
    whole, data = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        whole.update(head)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        header = f.read(n)
        whole.update(header)
        while chunk := f.read(CHUNK):
            whole.update(chunk)
            data.update(chunk)
    return whole.hexdigest(), data.hexdigest()[:12]
