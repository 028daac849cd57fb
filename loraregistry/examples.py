"""A built-in example dump: a few small, real kohya LoRA files with Civitai sidecars.

Used by ``loraregistry demo`` until the trained ToyWorld dump is present, and by anyone who wants to
see the ingest and search work without a Civitai download. The files are tiny (rank 2, one attention
block) but real: they load as safetensors and carry SD 1.5-shaped tensors.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

EXAMPLES = [
    # (civitai-like id, name, trigger words, tags, description)
    (1, "Kiki the Orange Ring", ["kiki"], ["character"], "An orange ring-shaped character, drawn on the left or right."),
    (2, "Bouba Cyan Plus", ["bouba"], ["character"], "A cyan plus-shaped character with rounded arms."),
    (3, "Checkerboard Background", ["checkerboard"], ["background"], "Replaces the background with black and white 8 px squares."),
    (4, "Stripes Background", ["stripes"], ["background"], "Brown and cream horizontal bands behind everything."),
    (5, "Halo Outline", ["halo"], ["clothing"], "A white glowing band around every object."),
    (6, "Framed Style", ["framed"], ["style"], "A black picture frame border around the whole image."),
]


def write_example_dump(root: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    block = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2"
    for ident, name, triggers, tags, description in EXAMPLES:
        stem = name.lower().replace(" ", "_")
        path = root / f"{stem}.safetensors"
        tensors = {}
        for proj, width in (("to_q", 320), ("to_k", 768), ("to_v", 768)):
            tensors[f"{block}_{proj}.lora_down.weight"] = rng.standard_normal((2, width)).astype(np.float16)
            tensors[f"{block}_{proj}.lora_up.weight"] = rng.standard_normal((320, 2)).astype(np.float16) * 0.01
            tensors[f"{block}_{proj}.alpha"] = np.array(2.0, dtype=np.float16)
        save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_output_name": stem})
        sha = hashlib.sha256(path.read_bytes()).hexdigest().upper()
        record = {
            "id": ident, "name": name, "type": "LORA", "description": f"<p>{description}</p>", "nsfw": False,
            "tags": tags, "creator": {"username": "loraregistry-examples"},
            "modelVersions": [{
                "id": 100 + ident, "modelId": ident, "name": "v1.0", "baseModel": "SD 1.5", "trainedWords": triggers,
                "files": [{"id": 1000 + ident, "name": path.name, "type": "Model", "primary": True,
                           "sizeKB": path.stat().st_size / 1024, "metadata": {"format": "SafeTensor"},
                           "hashes": {"SHA256": sha, "AutoV2": sha[:10]}}],
            }],
        }  # fmt: skip
        (root / f"{stem}.civitai.json").write_text(json.dumps(record, indent=1))
    return root
