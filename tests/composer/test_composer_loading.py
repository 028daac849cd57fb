"""LoRA formats: exact LyCORIS rewrites, the real LoKr files on an SD1.5-shaped UNet, refusals."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from composer import convert as cv
from composer.loras import LoraError, LoraRef, extract_prompt_loras, parse_lora_token
from registry.formats import detect_format
from registry.safetensors_header import read_header

SD15_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
)


def _meta_sd15():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                          num_hidden_layers=12, projection_dim=768))
    mods = {"lora_unet_" + n.replace(".", "_"): m for n, m in unet.named_modules()}
    # kohya names the old transformers layout (text_model.encoder...).
    mods.update({"lora_te_text_model_" + n.replace(".", "_"): m for n, m in te.named_modules()})
    return mods


@pytest.mark.parametrize("name", ["smart_falcon_4_lokr", "smart_falcon_8_lokr"])
def test_real_lokr_files_fit_sd15_exactly(fixtures_dir, name):
    """Every LoKr module maps onto an SD1.5 UNet/CLIP-L module (built on the meta device: shapes
    only, no 3.4 GB of weights), the rewritten kohya factors have that module's exact weight shape,
    and their product equals LyCORIS' kron delta."""
    mods = _meta_sd15()
    path = os.path.join(fixtures_dir, f"{name}.safetensors")
    sd = load_file(path)
    info = detect_format(read_header(path))
    assert (info.format, info.base_family, info.context_width) == ("lycoris-lokr", "sd1", 768)
    convs = {k: (m.in_channels, *m.kernel_size) for k, m in mods.items() if isinstance(m, torch.nn.Conv2d)}
    out = cv.lokr_to_kohya_lora(sd, convs)
    prefixes = {k.split(".", 1)[0] for k in out}
    assert len(prefixes) == 350
    n_conv = 0
    g = torch.Generator().manual_seed(0)
    for p in sorted(prefixes):
        m = mods[p]
        down, up, alpha = out[f"{p}.lora_down.weight"], out[f"{p}.lora_up.weight"], out[f"{p}.alpha"]
        assert tuple(down.shape[1:]) == tuple(m.weight.shape[1:]) and up.shape[0] == m.weight.shape[0]
        n_conv += isinstance(m, torch.nn.Conv2d)
        # Compare 256 random entries of the delta (dense 1280 x 11520 products are too slow for CI).
        up2, down2 = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)
        rows = torch.randint(0, up2.shape[0], (256,), generator=g)
        cols = torch.randint(0, down2.shape[1], (256,), generator=g)
        got = (up2[rows] * down2[:, cols].T).sum(1) * (float(alpha) / down2.shape[0])
        w1 = sd[f"{p}.lokr_w1_a"].float() @ sd[f"{p}.lokr_w1_b"].float()
        w2 = sd[f"{p}.lokr_w2_a"].float() @ sd[f"{p}.lokr_w2_b"].float()
        scale = float(sd[f"{p}.alpha"]) / sd[f"{p}.lokr_w2_a"].shape[1]
        c, d = w2.shape
        ref = w1[rows // c, cols // d] * w2[rows % c, cols % d] * scale
        assert torch.allclose(got, ref, atol=1e-6 * max(1.0, ref.abs().max().item()))
    assert n_conv > 40  # resnet convs, shortcuts, samplers


def test_loha_rewrite_is_exact():
    g = torch.Generator().manual_seed(0)
    sd = {
        "lora_unet_x_conv1.hada_w1_a": torch.randn(8, 3, generator=g), "lora_unet_x_conv1.hada_w1_b": torch.randn(3, 36, generator=g),
        "lora_unet_x_conv1.hada_w2_a": torch.randn(8, 3, generator=g), "lora_unet_x_conv1.hada_w2_b": torch.randn(3, 36, generator=g),
        "lora_unet_x_conv1.alpha": torch.tensor(1.5),
    }
    out = cv.loha_to_kohya_lora(sd, {"lora_unet_x_conv1": (4, 3, 3)})
    down, up = out["lora_unet_x_conv1.lora_down.weight"], out["lora_unet_x_conv1.lora_up.weight"]
    assert down.shape == (9, 4, 3, 3) and up.shape == (8, 9, 1, 1)
    delta = up.reshape(8, 9) @ down.reshape(9, 36) * float(out["lora_unet_x_conv1.alpha"]) / 9
    assert torch.allclose(delta, cv.loha_delta(sd, "lora_unet_x_conv1"), atol=1e-5)


def test_leftover_keys_raise():
    with pytest.raises(cv.UnsupportedLoraError):
        cv.lokr_to_kohya_lora({"a.lokr_w1": torch.ones(2, 2), "a.lokr_w2": torch.ones(2, 2), "junk": torch.ones(1)})


def test_loader_reports_the_registry_format(sd1_composer, fixtures_dir):
    """The composer checks a file with the registry's detector: one vocabulary for both."""
    path = os.path.join(fixtures_dir, "diffusers_sd15_text_to_image_lora.safetensors")
    info = detect_format(read_header(path))
    with pytest.raises(LoraError, match="width 768"):  # an SD1.5 LoRA on the tiny UNet (width 32)
        sd1_composer.loader.check(path)
    assert info.format == "diffusers" and info.base_family == "sd1"


def test_family_from_metadata_is_checked(sd1_composer, sd1_dir, tmp_path):
    """A LoRA whose shapes say nothing of its family (self-attention only) but whose metadata says
    SDXL is refused on an SD1-style pipeline before anything is installed; without the check its
    tensors would fit and load silently."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    unet = DiffusionPipeline.from_pretrained(sd1_dir).unet
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, mod in unet.named_modules():
        if name.endswith("attn1.to_q"):
            key = "lora_unet_" + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"] = torch.randn(2, mod.in_features, generator=g)
            sd[f"{key}.lora_up.weight"] = torch.randn(mod.out_features, 2, generator=g)
    path = str(tmp_path / "xl_by_metadata.safetensors")
    save_file(sd, path, metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    adapters_before = set(sd1_composer.pipe.unet.peft_config) if getattr(sd1_composer.pipe.unet, "peft_config", None) else set()
    with pytest.raises(LoraError, match="sdxl LoRA .*metadata.* the pipeline is other"):
        sd1_composer.loader.load(LoraRef(path))
    adapters_after = set(sd1_composer.pipe.unet.peft_config) if getattr(sd1_composer.pipe.unet, "peft_config", None) else set()
    assert adapters_after == adapters_before
    # The same tensors without the metadata load: it is the family check that refused them.
    plain = str(tmp_path / "plain.safetensors")
    save_file(sd, plain)
    assert sd1_composer.loader.load(LoraRef(plain)).format == "kohya-lora"


def test_lora_tokens_and_prompt_tags(tmp_path):
    assert parse_lora_token("42:0.5") == LoraRef("42", 0.5)
    assert parse_lora_token("styles/ink.safetensors") == LoraRef("styles/ink.safetensors")
    f = tmp_path / "odd:name.safetensors"
    f.write_bytes(b"")
    assert parse_lora_token(str(f)) == LoraRef(str(f))
    prompt, refs = extract_prompt_loras("a knight, <lora:armor:0.8> castle <lora:ink>")
    assert prompt == "a knight, castle"
    assert refs == [LoraRef("armor", 0.8), LoraRef("ink", 1.0)]
    assert extract_prompt_loras("<lyco:falcon:0.5>, a bird") == ("a bird", [LoraRef("falcon", 0.5)])
    with pytest.raises(LoraError, match="hypernetworks are not supported"):
        extract_prompt_loras("a bird <hypernet:old:1>")


def test_sd1_loads_all_formats_with_text_encoder_parts(sd1_dir, sd1_loras):
    from composer import Composer

    c = Composer.from_pretrained(sd1_dir, device="cpu")
    loaded = c.loader.load_all([LoraRef(p) for p in sd1_loras.values()])
    assert [a.format for a in loaded] == ["kohya-locon", "peft", "lycoris-lokr", "lycoris-loha"]
    assert [a.text_encoder for a in loaded] == [True, False, True, False]
    # The text-encoder half really arrived (transformers 5 renamed CLIP's modules).
    sd = load_file(sd1_loras["kohya"])
    q = c.pipe.text_encoder.encoder.layers[0].self_attn.q_proj
    assert torch.equal(q.lora_A[loaded[0].adapter].weight, sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"])
    # LoKr on a real conv: the loaded factors reproduce the LyCORIS delta.
    lokr = load_file(sd1_loras["lokr"])
    conv = c.pipe.unet.down_blocks[0].resnets[0].conv1
    a = loaded[2].adapter
    delta = (conv.lora_B[a].weight.flatten(1) @ conv.lora_A[a].weight.flatten(1)) * conv.scaling[a]
    assert torch.allclose(delta, cv.lokr_delta(lokr, "lora_unet_down_blocks_0_resnets_0_conv1"), atol=1e-6)


@pytest.mark.parametrize("name,needle", [
    ("smart_falcon_4_lokr", "cross-attention width 768"),
    ("diffusers_sd2_bf16", "width 1024"),
    ("flux_aitoolkit_lora", "flux"),
    ("malformed_kohya_like", "unrecognised LoRA key layout"),
])
def test_wrong_family_and_bad_files_are_refused(sd1_composer, fixtures_dir, name, needle):
    with pytest.raises(LoraError, match=needle):
        sd1_composer.loader.load(LoraRef(os.path.join(fixtures_dir, f"{name}.safetensors")))
