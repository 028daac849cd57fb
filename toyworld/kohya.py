"""PEFT LoRA state dicts -> kohya-ss `networks.lora` format, the format Civitai SD 1.x LoRAs use.

kohya names a module by its diffusers path with dots turned into underscores, prefixed
`lora_unet_` or `lora_te_` (text encoder paths start at `text_model`), and stores
`<name>.lora_down.weight` (PEFT lora_A), `<name>.lora_up.weight` (PEFT lora_B) and `<name>.alpha`.
Loading goes the other way through diffusers' own converter (`pipe.load_lora_weights`).
"""

from __future__ import annotations

import json

import torch

KOHYA_UNET, KOHYA_TE = "lora_unet_", "lora_te_"


def peft_to_kohya(
    unet_sd: dict[str, torch.Tensor], te_sd: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Convert `get_peft_model_state_dict` outputs of the UNet and text encoder.

    Keys are popped as they are used and any key left over raises, so that a PEFT layout this
    function does not know cannot be dropped silently.
    """
    out: dict[str, torch.Tensor] = {}
    for prefix, sd in ((KOHYA_UNET, dict(unet_sd)), (KOHYA_TE, dict(te_sd))):
        for key in [k for k in sd if k.endswith(".lora_A.weight")]:
            module = key[: -len(".lora_A.weight")]
            up = sd.pop(f"{module}.lora_B.weight")
            down = sd.pop(key)
            if prefix == KOHYA_TE and not module.startswith("text_model."):
                # transformers 5 roots CLIPTextModel's parameters without `text_model.`; kohya
                # (and diffusers' converter) expect the CLIPTextModel path of transformers 4.
                module = f"text_model.{module}"
            name = prefix + module.replace(".", "_")
            out[f"{name}.lora_down.weight"] = down.contiguous()
            out[f"{name}.lora_up.weight"] = up.contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
        if sd:
            raise ValueError(f"PEFT keys not converted: {sorted(sd)}")
    return out


def kohya_metadata(
    output_name: str, rank: int, alpha: float, trigger: str, n_images: int, extra: dict[str, str]
) -> dict[str, str]:
    """The `ss_*` header kohya's train_network.py writes (values are strings, as safetensors
    metadata requires)."""
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_output_name": output_name,
        "ss_resolution": "(64, 64)",
        "ss_num_train_images": str(n_images),
        "ss_tag_frequency": json.dumps({f"1_{trigger}": {trigger: n_images}}),
        "modelspec.architecture": "stable-diffusion-v1/lora",
    }
    meta.update(extra)
    return meta
