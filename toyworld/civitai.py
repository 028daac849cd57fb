"""A Civitai `/api/v1/models/{id}` record for a LoRA file: the sidecar a Civitai dump carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.hashing import autov2, sha256_file


def file_hashes(path: Path) -> dict[str, str]:
    """Civitai's hashes: full SHA256 and AutoV2 (Civitai upper-cases them)."""
    sha = sha256_file(str(path)).upper()
    return {"SHA256": sha, "AutoV2": autov2(sha)}


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
