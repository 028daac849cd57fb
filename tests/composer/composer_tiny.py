"""Tiny SD1 / SDXL pipelines built from configs (like diffusers' ``get_dummy_components``),
saved with ``save_pretrained`` so that tests load them the way users load real ones, and LoRA
files in several formats written for them.

No hub access: the CLIP tokenizer is a byte-level one written from scratch (every byte its own
token, no merges), which is all a random text encoder needs.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tiny_tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)


def _text_config(**kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=600, **kw,
    )


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=32,
    )


def tiny_sd1_components(tmp: Path, cross_attention_dim: int = 32) -> dict:
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, norm_num_groups=32,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(projection_dim=32) if cross_attention_dim == 32 else _text_config(projection_dim=32))
    return dict(
        unet=unet, scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        vae=_vae(), text_encoder=text_encoder, tokenizer=tiny_tokenizer(tmp / "_tok"),
        safety_checker=None, feature_extractor=None, image_encoder=None,
    )


def save_tiny_sd1(directory: Path) -> str:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd1_components(Path(directory)), requires_safety_checker=False)
    out = Path(directory) / "pipe"
    pipe.save_pretrained(out)
    return str(out)


def save_tiny_sdxl(directory: Path) -> str:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )
    torch.manual_seed(0)
    te1 = CLIPTextModel(_text_config(projection_dim=32, hidden_act="gelu"))
    torch.manual_seed(0)
    te2 = CLIPTextModelWithProjection(_text_config(projection_dim=32, hidden_act="gelu"))
    tok = tiny_tokenizer(Path(directory) / "_tok")
    pipe = StableDiffusionXLPipeline(
        unet=unet, scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                                    beta_schedule="scaled_linear", timestep_spacing="leading"),
        vae=_vae(), text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
        image_encoder=None, feature_extractor=None,
    )
    out = Path(directory) / "pipe"
    pipe.save_pretrained(out)
    return str(out)


# ---------------------------------------------------------------- LoRA files for the tiny UNets

def _targets(unet, text_encoder=None, convs: bool = False):
    """(kohya prefix, module name, module) for the layers a typical LoRA trains."""
    out = []
    for name, mod in unet.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(name.endswith(s) for s in ("to_q", "to_k", "to_v", "to_out.0")):
            out.append(("lora_unet_", "unet", name, mod))
        if convs and isinstance(mod, torch.nn.Conv2d) and ("resnets" in name and name.endswith(("conv1", "conv2"))):
            out.append(("lora_unet_", "unet", name, mod))
    if text_encoder is not None:
        for name, mod in text_encoder.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.endswith(("q_proj", "k_proj", "v_proj", "out_proj")):
                out.append(("lora_te_text_model_", "text_encoder", name, mod))
    return out


def _shape2d(mod):
    if isinstance(mod, torch.nn.Conv2d):
        return mod.out_channels, mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
    return mod.out_features, mod.in_features


def write_kohya_lora(path, unet, text_encoder=None, rank=4, alpha=2.0, seed=1, convs=True, scale=0.3):
    """kohya LoRA (with convs: LoCon): ``lora_unet_<module>.lora_down/lora_up/alpha``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, _, name, mod in _targets(unet, text_encoder, convs):
        key = prefix + name.replace(".", "_")
        if isinstance(mod, torch.nn.Conv2d):
            down = torch.randn(rank, mod.in_channels, *mod.kernel_size, generator=g) * scale
            up = torch.randn(mod.out_channels, rank, 1, 1, generator=g) * scale
        else:
            down = torch.randn(rank, mod.in_features, generator=g) * scale
            up = torch.randn(mod.out_features, rank, generator=g) * scale
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora"})
    return str(path)


def write_peft_lora(path, unet, rank=4, seed=2, scale=0.3):
    """diffusers/PEFT format: ``unet.<module>.lora_A.weight / lora_B.weight``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for _, comp, name, mod in _targets(unet):
        sd[f"{comp}.{name}.lora_A.weight"] = torch.randn(rank, mod.in_features, generator=g) * scale
        sd[f"{comp}.{name}.lora_B.weight"] = torch.randn(mod.out_features, rank, generator=g) * scale
    save_file(sd, str(path))
    return str(path)


def _factor(n: int) -> tuple[int, int]:
    a = int(n ** 0.5)
    while n % a:
        a -= 1
    return a, n // a


def write_lokr(path, unet, text_encoder=None, rank=2, seed=3, scale=0.3, convs=True):
    """LyCORIS LoKr with kohya names: ``lokr_w1_a/b`` x ``lokr_w2_a/b``, alpha."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, _, name, mod in _targets(unet, text_encoder, convs):
        key = prefix + name.replace(".", "_")
        out_dim, in_dim = _shape2d(mod)
        (a, c), (b, d) = _factor(out_dim), _factor(in_dim)
        sd[f"{key}.lokr_w1_a"] = torch.randn(a, rank, generator=g) * scale
        sd[f"{key}.lokr_w1_b"] = torch.randn(rank, b, generator=g) * scale
        sd[f"{key}.lokr_w2_a"] = torch.randn(c, rank, generator=g) * scale
        sd[f"{key}.lokr_w2_b"] = torch.randn(rank, d, generator=g) * scale
        sd[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(sd, str(path), metadata={"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "lokr"}'})
    return str(path)


def write_loha(path, unet, rank=2, seed=4, scale=0.3, convs=True):
    """LyCORIS LoHa: ``hada_w1_a/b``, ``hada_w2_a/b``, alpha."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, _, name, mod in _targets(unet, None, convs):
        key = prefix + name.replace(".", "_")
        out_dim, in_dim = _shape2d(mod)
        for w in ("w1", "w2"):
            sd[f"{key}.hada_{w}_a"] = torch.randn(out_dim, rank, generator=g) * scale
            sd[f"{key}.hada_{w}_b"] = torch.randn(rank, in_dim, generator=g) * scale
        sd[f"{key}.alpha"] = torch.tensor(1.0)
    save_file(sd, str(path), metadata={"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "loha"}'})
    return str(path)
