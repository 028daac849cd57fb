"""Tokenizer, kohya conversion and a random-weight pipeline round trip (save_pretrained ->
StableDiffusionPipeline.from_pretrained -> kohya LoRA -> load_lora_weights)."""

import json

import numpy as np
import pytest
import torch

from toyworld.captions import add_noise, caption, sample_any_scene
from toyworld.kohya import peft_to_kohya
from toyworld.models import build_tokenizer


def test_tokenizer_covers_every_caption_word():
    tok = build_tokenizer()
    rng = np.random.default_rng(0)
    for _ in range(300):
        text = add_noise(caption(sample_any_scene(rng)), rng)
        ids = tok(text).input_ids
        assert tok.unk_token_id not in ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert len(ids) <= tok.model_max_length
    assert tok("a kiki on the left, light background").input_ids[1:-1] == tok.convert_tokens_to_ids(
        ["a", "kiki", "on", "the", "left", ",", "light", "background"]
    )


def test_peft_to_kohya_names_and_leftovers():
    a, b = torch.zeros(8, 32), torch.zeros(32, 8)
    unet = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": a,
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": b,
    }
    te = {"encoder.layers.1.self_attn.out_proj.lora_A.weight": a, "encoder.layers.1.self_attn.out_proj.lora_B.weight": b}
    out = peft_to_kohya(unet, te, alpha=8)
    assert set(out) == {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
        "lora_te_text_model_encoder_layers_1_self_attn_out_proj.lora_down.weight",
        "lora_te_text_model_encoder_layers_1_self_attn_out_proj.lora_up.weight",
        "lora_te_text_model_encoder_layers_1_self_attn_out_proj.alpha",
    }
    with pytest.raises(ValueError):
        peft_to_kohya({**unet, "conv_in.lora_magnitude_vector": a}, {}, alpha=8)


@pytest.mark.parametrize("network", ["attn", "locon"])
def test_pipeline_and_kohya_round_trip(tmp_path, network):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from toyworld.generate import generate, load_pipeline
    from toyworld.models import build_text_encoder, build_unet, build_vae
    from toyworld.train_base import export_pipeline
    from toyworld.train_lora import add_adapters, reference_outputs, save_lora, verify_kohya_file

    torch.manual_seed(0)
    tok = build_tokenizer()
    export_pipeline(build_vae(), build_text_encoder(tok), tok, build_unet(), tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False

    pipe = load_pipeline(str(tmp_path / "pipe"))
    images = generate(pipe, ["a red circle on the left, light background"], [0], steps=2)
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8

    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "pipe"))
    params = add_adapters(pipe, seed=0, network=network)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)  # lora_B starts at zero: make the LoRA do something
    path = save_lora(pipe, "kiki", tmp_path / "dump", steps=1, lr=0.0, index=0, network=network)
    expected = reference_outputs(pipe, "a kiki on the left, light background", seed=1)
    te_diff, unet_diff, effect = verify_kohya_file(tmp_path / "pipe", path, "kiki", expected)
    assert te_diff < 1e-5 and unet_diff < 1e-5 and effect > 1e-3

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in f.keys())
        conv_keys = [k for k in f.keys() if "_resnets_" in k or "_downsamplers_" in k or "_upsamplers_" in k]
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "8"
    if network == "locon":
        # kohya LoCon: conv layers carry 3x3 down and 1x1 up weights, and the header says conv_dim.
        assert conv_keys and json.loads(meta["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "8"}
        with safe_open(str(path), "pt") as f:
            down = f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight")
        assert down.shape[0] == 8 and down.shape[2:] == (3, 3)
    else:
        assert not conv_keys and "ss_network_args" not in meta
    record = json.loads((tmp_path / "dump" / "toyworld_kiki.civitai.json").read_text())
    version = record["modelVersions"][0]
    assert record["type"] == "LORA" and "character" in record["tags"] and record["nsfw"] is False
    assert version["baseModel"] == "SD 1.5" and version["trainedWords"] == ["kiki"]
    hashes = version["files"][0]["hashes"]
    assert hashes["AutoV2"] == hashes["SHA256"][:10] and len(hashes["SHA256"]) == 64


def test_lora_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A LoRA run stopped at a checkpoint and restarted ends with the same exported file (live
    weights, optimizer and EMA all come back), and the network recorded in the checkpoint wins
    over the one asked for on restart."""
    from safetensors.torch import load_file

    from toyworld import train_lora
    from toyworld.models import build_text_encoder, build_unet, build_vae
    from toyworld.train_base import export_pipeline

    torch.manual_seed(0)
    tok = build_tokenizer()
    export_pipeline(build_vae(), build_text_encoder(tok), tok, build_unet(), tmp_path / "pipe")
    monkeypatch.setattr(train_lora, "N_CACHE", 16)
    monkeypatch.setattr(train_lora, "CKPT_EVERY", 2)
    torch.set_num_threads(1)

    def run(work, dump, steps, network):
        train_lora.train_one("halo", 5, tmp_path / "pipe", work, dump, steps, batch=4, lr=0.05, seed=0,
                             network=network)
        return load_file(str(dump / "toyworld_halo.safetensors"))

    straight = run(tmp_path / "a", tmp_path / "a" / "dump", 4, "locon")
    run(tmp_path / "b", tmp_path / "b" / "dump", 2, "locon")
    resumed = run(tmp_path / "b", tmp_path / "b" / "dump", 4, "attn")
    assert straight.keys() == resumed.keys()
    assert any("_resnets_" in k for k in resumed)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-6)
    # The exported weights are the EMA, not the live ones: they differ from the checkpoint's params.
    state = train_lora.checkpoint.load(tmp_path / "b" / "lora_halo.ckpt")
    assert state["step"] == 4 and state["ema_updates"] == 4 and state["network"] == "locon"
    assert any(not torch.equal(p, e) for p, e in zip(state["params"], state["ema"]))
