"""Small, real adapter files and Civitai sidecars, written for tests."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SD1_BLOCK = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0"


def kohya_lora(path: Path, *, context: int = 768, rank: int = 4, seed: int = 0, metadata: dict | None = None, te: bool = True) -> Path:
    """A kohya LoRA touching one attention block: cross-attention input width = ``context``."""
    g = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor] = {}
    for name, width in (("attn1_to_q", 320), ("attn2_to_q", 320), ("attn2_to_k", context), ("attn2_to_v", context)):
        t[f"{SD1_BLOCK}_{name}.lora_down.weight"] = torch.randn(rank, width, generator=g)
        t[f"{SD1_BLOCK}_{name}.lora_up.weight"] = torch.randn(320, rank, generator=g)
        t[f"{SD1_BLOCK}_{name}.alpha"] = torch.tensor(float(rank))
    if te:
        key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
        t[f"{key}.lora_down.weight"] = torch.randn(rank, context if context in (768, 1024) else 768, generator=g)
        t[f"{key}.lora_up.weight"] = torch.randn(768, rank, generator=g)
        t[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(t, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank), **(metadata or {})})
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def civitai_sidecar(adapter: Path, *, model_id: int, version_id: int, name: str, trained_words: list[str],
                    base_model: str = "SD 1.5", tags: list[str] | None = None, description: str = "",
                    with_hash: bool = True, suffix: str = ".civitai.json") -> Path:
    sha = sha256_of(adapter)
    record = {
        "id": model_id, "name": name, "type": "LORA", "description": f"<p>{description}</p>", "nsfw": False,
        "creator": {"username": "tester"}, "tags": tags or [],
        "modelVersions": [{
            "id": version_id, "modelId": model_id, "name": "v1.0", "baseModel": base_model,
            "trainedWords": trained_words, "createdAt": "2024-01-01T00:00:00Z",
            "files": [{
                "id": version_id * 10, "name": adapter.name, "type": "Model", "primary": True,
                "sizeKB": adapter.stat().st_size / 1024, "metadata": {"format": "SafeTensor"},
                "hashes": {"SHA256": sha.upper(), "AutoV2": sha[:10].upper()} if with_hash else {},
            }],
        }],
    }  # fmt: skip
    out = adapter.with_name(adapter.name[: -len(".safetensors")] + suffix)
    out.write_text(json.dumps(record))
    return out
