"""A Civitai `/api/v1/models/{id}` record for a LoRA file: the sidecar a Civitai dump carries."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def file_hashes(path: Path) -> dict[str, str]:
    """Civitai's hashes: full SHA256, and AutoV2 = its first 10 hex digits (Civitai upper-cases)."""
    sha = hashlib.sha256(path.read_bytes()).hexdigest().upper()
    return {"SHA256": sha, "AutoV2": sha[:10]}


def model_record(
    path: Path,
    model_id: int,
    version_id: int,
    name: str,
    description: str,
    trigger: str,
    tags: list[str],
    creator: str = "toyworld",
) -> dict[str, Any]:
    return {
        "id": model_id,
        "name": name,
        "description": description,
        "type": "LORA",
        "nsfw": False,
        "tags": tags,
        "creator": {"username": creator},
        "modelVersions": [
            {
                "id": version_id,
                "modelId": model_id,
                "name": "v1.0",
                "baseModel": "SD 1.5",
                "trainedWords": [trigger],
                "files": [
                    {
                        "name": path.name,
                        "sizeKB": round(path.stat().st_size / 1024, 4),
                        "type": "Model",
                        "primary": True,
                        "metadata": {"format": "SafeTensor", "fp": "fp32"},
                        "hashes": file_hashes(path),
                    }
                ],
            }
        ],
    }
