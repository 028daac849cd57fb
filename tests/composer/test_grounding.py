"""Grounding: which unit of the prompt asked for each LoRA, its tokens, the mask maths, the masked
single pass against Merge and a LoRA alone, and grounded composition end to end on tiny pipelines."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from composer import Job
from composer.grounding import masks as gm
from composer.grounding.phrases import own_prompt, unit_of, units, without
from composer.grounding.roles import role_of
from composer.grounding.tokens import content_tokens, span_tokens
from composer.params import GroundingParams

PROMPT = "a kiki with halo on the left and a bouba on the right, checkerboard background, framed"


# ---------------------------------------------------------------- units of a prompt
def test_units_cut_at_commas_and_and_not_with():
    assert [u.text for u in units(PROMPT)] == [
        "a kiki with halo on the left", "a bouba on the right", "checkerboard background", "framed"]
    for u in units(PROMPT):
        assert PROMPT[u.start:u.end] == u.text


def test_unit_of_by_phrase_trigger_and_tag_place():
    assert unit_of(PROMPT, "kiki").text == "a kiki with halo on the left"
    assert unit_of(PROMPT, "halo on the left").text == "a kiki with halo on the left"  # a search phrase
    assert unit_of(PROMPT, None, ("bouba",)).text == "a bouba on the right"  # a trigger word
    assert unit_of(PROMPT, None, (), at=PROMPT.index("checkerboard") + 3).text == "checkerboard background"
    assert unit_of(PROMPT, "nothing here", ("nope",)) is None  # global
    assert unit_of("kikis on the left", "kiki") is None  # whole words only


def test_prompt_without_a_unit_and_own_prompts():
    us = {u.text.split()[1] if len(u.text.split()) > 1 else u.text: u for u in units(PROMPT)}
    kiki, bouba = us["kiki"], us["bouba"]
    assert without(PROMPT, [kiki]) == "a bouba on the right, checkerboard background, framed"
    assert without(PROMPT, [bouba]) == "a kiki with halo on the left, checkerboard background, framed"
    board, framed = unit_of(PROMPT, "checkerboard"), unit_of(PROMPT, "framed")
    owned = [kiki, bouba, board, framed]
    assert own_prompt(PROMPT, kiki, owned) == "a kiki with halo on the left"
    assert own_prompt(PROMPT, board, owned) == "checkerboard background"
    assert own_prompt("a kiki on the left, light background", None, [unit_of("a kiki on the left, light background", "kiki")]) \
        == "light background"  # a global LoRA keeps the shared context


def test_roles_from_civitai_tags():
    assert role_of(["character", "toyworld", "kiki"]) == "object"
    assert role_of(("background", "toyworld")) == "background"
    assert role_of(["Style", "anime"]) == "style"
    assert role_of(["clothing"]) == "attribute"
    assert role_of(["concept", "toyworld"]) == role_of([]) == "concept"


# ---------------------------------------------------------------- token positions (CLIP rules)
@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from composer_tiny import tiny_tokenizer  # the real CLIPTokenizer class, byte-level vocabulary

    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _tokens(tok, prompt, ids):
    return "".join(tok.convert_ids_to_tokens([tok(prompt, padding="max_length", max_length=77).input_ids[i] for i in ids]))


def test_span_tokens_multi_token_words_and_weights(clip_tokenizer):
    tok = clip_tokenizer
    p = "a photo, (kikiboo:1.2) on the left"
    start = p.index("(kikiboo")
    ids = span_tokens(tok, p, start, len(p))
    # every BPE piece of the trigger and of the A1111 weight syntax, as the pipeline encodes them
    assert _tokens(tok, p, ids).replace("</w>", "") == "(kikiboo:1.2)ontheleft"
    assert ids[0] == 1 + len(tok("a photo,", add_special_tokens=False).input_ids)
    assert content_tokens(tok, p) == list(range(1, 1 + len(tok(p, add_special_tokens=False).input_ids)))


def test_span_tokens_past_the_77_token_limit(clip_tokenizer):
    long = "x " * 80 + "a kiki on the left"
    start = long.index("a kiki")
    assert span_tokens(clip_tokenizer, long, start, len(long)) == []  # truncated away: no tokens
    assert max(content_tokens(clip_tokenizer, long)) == 75  # the last position is the end token
    with pytest.raises(ValueError):
        span_tokens(clip_tokenizer, "abc", 2, 9)


# ---------------------------------------------------------------- mask maths, hand-worked
def test_phrase_attended_on_the_left_gives_a_left_mask():
    # 4 x 4 latent, 16 pixels; tokens: 0 start (a sink), 1-2 "kiki", 3 "checkerboard"
    probs = torch.zeros(1, 2, 16, 5)
    grid = torch.arange(16).reshape(4, 4)
    left = (grid % 4 < 2).flatten()
    probs[:, :, :, 0] = 0.8  # the start token takes most attention everywhere
    probs[:, :, left, 1] = 0.15
    probs[:, :, ~left, 3] = 0.15
    probs[:, :, :, 4] = 0.05
    share = gm.phrase_attention(probs, [[1, 2], [3]], content=[1, 2, 3])
    assert share.shape == (2, 1, 16)
    kiki = gm.region(share[0].reshape(1, 4, 4), sigma=0)
    assert torch.equal(kiki[0] > 0.5, left.reshape(4, 4))
    assert torch.allclose(share.sum(0), torch.ones(1, 16))  # renormalised over the content tokens: the sink is gone


def test_all_image_phrase_gives_a_full_mask_and_no_tokens_give_zeros():
    flat = torch.full((1, 2, 16, 4), 0.25)
    share = gm.phrase_attention(flat, [[1, 2, 3], []], content=[1, 2, 3])
    assert torch.allclose(gm.region(share[0].reshape(1, 4, 4)), torch.ones(1, 4, 4))
    assert torch.equal(share[1], torch.zeros(1, 16))  # the sources then treat the LoRA as global


def test_route_by_role():
    h = w = 8
    left, right = torch.zeros(h, w), torch.zeros(h, w)
    left[2:6, 0:3], right[2:6, 5:8] = 1, 1
    regions = torch.stack([left, right, torch.full((h, w), 0.9), torch.zeros(h, w), torch.zeros(h, w)]).unsqueeze(1)
    roles = ["object", "object", "background", "style", "attribute"]
    m = gm.route(regions, roles, [None, None, None, None, 0], attribute_radius=1)[:, 0]
    assert torch.equal(m[0], left) and torch.equal(m[1], right)
    assert torch.equal(m[3], torch.ones(h, w))
    assert torch.equal(m[4], gm.dilate(left, 1))  # the attribute: around its object
    assert torch.equal(m[2], 1 - torch.maximum(torch.maximum(left, right), m[4]))  # what nobody claims


def test_a_lora_drawn_elsewhere_is_masked_out_and_claims_nothing():
    """fusion's riders are drawn in their object's own trajectory: in the composition the attribute's
    mask is 0 and the background takes its band around the object."""
    h = w = 8
    left = torch.zeros(h, w)
    left[2:6, 0:3] = 1
    regions = torch.stack([left, torch.full((h, w), 0.9), torch.zeros(h, w)]).unsqueeze(1)
    m = gm.route(regions, ["object", "background", "attribute"], [None, None, 0], attribute_radius=1,
                 elsewhere=[2])[:, 0]
    assert torch.equal(m[0], left)
    assert torch.equal(m[2], torch.zeros(h, w))
    assert torch.equal(m[1], 1 - left)  # not 1 - dilate(left): the band is the background's


def test_overlapping_objects_split_by_their_share():
    a, b = torch.full((1, 1, 2, 2), 0.9), torch.full((1, 1, 2, 2), 0.45)
    m = gm.route(torch.cat([a, b]), ["object", "object"], [None, None], sharpness=8)
    assert m[0].min() > 0.89 and m[1].max() < 0.01


def test_spatial_prior_on_loratorio_weights():
    from composer import math as cm

    omega = torch.softmax(torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)), 0)
    same = torch.full((2, 1, 8, 8), 0.7)
    assert torch.allclose(cm.spatial_prior(omega, same, p=2), omega, atol=1e-6)  # equal masks change nothing
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, :, :, :4], masks[1, :, :, 4:] = 1, 1
    w = cm.spatial_prior(omega, masks, p=2)
    assert torch.all(w[0, :, :, :2] > 0.99) and torch.all(w[1, :, :, 2:] > 0.99)
    assert torch.allclose(cm.spatial_prior(omega, torch.zeros(2, 1, 8, 8), p=2), omega, atol=1e-6)  # no mask: plain


def test_masks_at_layer_resolution():
    m = torch.zeros(1, 1, 16, 16)
    m[..., :8] = 1
    assert gm.token_grid(64, 16, 16) == (8, 8) and gm.token_grid(9, 5, 5) == (3, 3)
    small = gm.at_resolution(m, 4, 4)
    assert torch.equal(small[0, 0], torch.tensor([[1.0, 1, 0, 0]] * 4))
    dot = torch.zeros(1, 1, 16, 16)
    dot[..., 5, 5] = 1  # one latent pixel of a region
    assert gm.at_resolution(dot, 4, 4)[0, 0, 1, 1] == pytest.approx(1 / 16)  # area: a sixteenth of its cell
    assert gm.at_resolution(dot, 4, 4, pool="max")[0, 0, 1, 1] == 1 and gm.at_resolution(dot, 4, 4, pool="max").sum() == 1


def test_region_state_leaves_coarse_layers_unmasked():
    from composer.regional import RegionState

    masks = torch.zeros(2, 1, 16, 16)  # (LoRAs, images, H, W): one LoRA on the left, one on the right
    masks[0, :, :, :8], masks[1, :, :, 8:] = 1, 1
    every = RegionState(("a", "b"), masks=masks)
    fine = RegionState(("a", "b"), masks=masks, finest=2)
    assert torch.equal(fine.rows(2, (8, 8)), every.rows(2, (8, 8)))  # 2x coarser: still masked
    assert torch.equal(fine.rows(2, (4, 4)), torch.ones(2, 2, 4, 4))  # 4x coarser: every LoRA everywhere
    assert not torch.equal(every.rows(2, (4, 4)), torch.ones(2, 2, 4, 4))


# ---------------------------------------------------------------- the masked single pass
def _unet_out(c, loras, regional_masks=None, prompt="a cat"):
    """The UNet's prediction for a fixed input: Merge of ``loras`` (no masks), or the regional pass."""
    from composer.regional import RegionState, adapters_disabled, regional_layers

    unet, pipe = c.pipe.unet, c.pipe
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    br = c.branch(None, prompt, "", None)  # the base text encoder, whatever adapters earlier tests left active
    states = torch.cat([br.uncond, br.cond])
    pipe.enable_lora()
    pipe.set_adapters([a.adapter for a in loras], [a.weight for a in loras])
    with torch.no_grad():
        if regional_masks is None:
            return unet(x, torch.tensor(500), encoder_hidden_states=states).sample
        state = RegionState(tuple(a.adapter for a in loras), masks=regional_masks, encodings=[states] * (len(loras) + 1))
        with adapters_disabled(unet), regional_layers(unet, state):
            return unet(x, torch.tensor(500), encoder_hidden_states=states).sample


def test_masked_single_pass_all_ones_is_merge_one_hot_is_the_lora_alone(sd1_composer, sd1_loras):
    """In float32, to 1e-4: every mask 1 is Merge of the LoRAs (linear, conv, attention keys and
    values); a mask of 1 for one LoRA and 0 for the other is that LoRA alone."""
    from composer.loras import LoraRef

    a, b = sd1_composer.loader.load_all([LoraRef(sd1_loras["peft"], 0.8), LoraRef(sd1_loras["loha"], 1.0)])
    merge = _unet_out(sd1_composer, [a, b])
    ones = _unet_out(sd1_composer, [a, b], torch.ones(2, 1, 16, 16))
    assert (merge - ones).abs().max() < 1e-4
    only_a = torch.zeros(2, 1, 16, 16)
    only_a[0] = 1
    alone = _unet_out(sd1_composer, [a])
    assert (alone - _unet_out(sd1_composer, [a, b], only_a)).abs().max() < 1e-4
    # and the masks matter: half and half is neither
    half = torch.zeros(2, 1, 16, 16)
    half[0, :, :, :8], half[1, :, :, 8:] = 1, 1
    mixed = _unet_out(sd1_composer, [a, b], half)
    assert (mixed - merge).abs().max() > 1e-3 and (mixed - alone).abs().max() > 1e-3


def test_masked_layer_is_the_lora_alone_on_its_region(sd1_composer, sd1_loras):
    """One layer: with one-hot masks, the output on each LoRA's tokens is exactly that LoRA's layer output."""
    from peft.tuners.lora import LoraLayer

    from composer.loras import LoraRef
    from composer.regional import RegionState, _masked_update

    a, b = sd1_composer.loader.load_all([LoraRef(sd1_loras["peft"], 1.0), LoraRef(sd1_loras["kohya"], 0.5)])
    unet = sd1_composer.pipe.unet
    sd1_composer.pipe.set_adapters([a.adapter, b.adapter], [1.0, 0.5])
    layer = next(m for n, m in unet.named_modules() if isinstance(m, LoraLayer) and n.endswith("attn1.to_q")
                 and a.adapter in m.lora_A and b.adapter in m.lora_A)
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, :, :8], masks[1, :, :, 8:] = 1, 1
    tokens = layer.in_features
    x = torch.randn(1, 64, tokens)  # an 8 x 8 layer of a 16 x 16 latent
    state = RegionState((a.adapter, b.adapter), masks=masks)
    with torch.no_grad():
        out = _masked_update(layer, state, x, layer.base_layer(x))
        left = torch.zeros(8, 8, dtype=torch.bool)
        left[:, :4] = True
        left = left.flatten()
        for adapter, where in ((a.adapter, left), (b.adapter, ~left)):
            layer.set_adapter(adapter)
            ref = layer(x)
            assert (out[:, where] - ref[:, where]).abs().max() < 1e-5
        layer.set_adapter([a.adapter, b.adapter])


# ---------------------------------------------------------------- end to end on tiny pipelines
@pytest.mark.parametrize("method", ["regional", "grounded-loratorio"])
def test_grounded_composition_sd1(sd1_composer, sd1_loras, method, tmp_path):
    from PIL import Image

    prompt = "a cat on the left, a dog on the right"
    loras = [sd1_loras["kohya"] + "@a cat on the left", sd1_loras["peft"] + "@a dog on the right"]
    r = sd1_composer.run(Job(prompt, loras=loras, method=method, steps=3, width=32, height=32, seed=1,
                             grounding=GroundingParams(source="contrast", steps=(0, 1))))
    opts = r.report["options"]["grounding"]
    assert opts["units"] == ["a cat on the left", "a dog on the right"] and opts["source"] == "contrast"
    # Merge's 2 samples a step, plus the mask source's 1 + 2 conditional samples on each mask step (2)
    extra = 2 * 3
    base = 2 if method == "regional" else 2 * 3
    assert r.report["unet_samples"] == 3 * base + extra
    assert len(r.weights) == 3 and r.weights[0].shape[0] == 2
    r.save(str(tmp_path / "g.png"))
    assert f"Composition: {method}" in Image.open(tmp_path / "g.png").text["parameters"]
    assert 'Grounding: "source=contrast' in r.parameters
    assert r.weights_map().size[1] > 2 * 40


@pytest.mark.parametrize("source", ["lora-contrast", "attention"])
def test_other_mask_sources_run(sd1_composer, sd1_loras, source):
    r = sd1_composer.run(Job("a cat on the left, a dog on the right", method="regional", steps=2, width=32, height=32,
                             loras=[sd1_loras["kohya"] + "@a cat on the left", sd1_loras["peft"] + "@a dog on the right"],
                             grounding=GroundingParams(source=source, steps=(0,))))
    m = r.weights[-1]
    assert m.shape == (2, 16, 16) and torch.isfinite(m).all() and m.max() <= 1 and m.min() >= 0


def test_grounded_composition_sdxl(sdxl_composer, sdxl_loras):
    """SDXL: two text encoders (the sources' calls carry the pooled embeddings and time ids)."""
    kw = dict(steps=2, width=32, height=32, seed=3, grounding=GroundingParams(source="contrast", steps=(0,)))
    loras = [sdxl_loras["kohya"] + "@a lighthouse on the left", sdxl_loras["peft"] + "@a boat on the right"]
    for method in ("regional", "grounded-loratorio"):
        r = sdxl_composer.run(Job("a lighthouse on the left, a boat on the right", loras=loras, method=method, **kw))
        assert np.asarray(r.image).std() > 1 and r.weights[-1].shape == (2, 16, 16)


def test_fixed_masks_replace_the_source(sd1_composer, sd1_loras):
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, :, :8], masks[1, :, :, 8:] = 1, 1
    r = sd1_composer.run(Job("a cat", loras=[sd1_loras["kohya"], sd1_loras["peft"]], method="regional", steps=2,
                             width=32, height=32, masks=masks))
    assert r.report["options"]["grounding"]["source"] == "fixed" and r.report["unet_samples"] == 2 * 2
    assert torch.equal(r.weights[0], masks[:, 0])


def test_grounded_loratorio_branches_on_their_own_prompts(sd1_composer, sd1_loras, monkeypatch):
    """branch_prompts="own": each LoRA's branch hears its own phrase and the shared context only."""
    from composer.denoiser import BASE
    from composer.methods.base import MethodContext
    from composer.methods.grounded_loratorio import GroundedLoratorio

    prompt = "a cat on the left, a dog on the right"
    loras = [sd1_loras["kohya"] + "@a cat on the left", sd1_loras["peft"] + "@a dog on the right"]
    kw = dict(loras=loras, method="grounded-loratorio", steps=2, width=32, height=32, seed=2)
    calls: list = []
    recording = []
    branches, ctx_branch = GroundedLoratorio.branches, MethodContext.branch

    def method_branches(self, ctx):  # what the method's own branches ask for (not the mask source's)
        calls.append([])
        recording.append(True)
        try:
            return branches(self, ctx)
        finally:
            recording.clear()

    def record(self, adapter, active, prompt=None):
        if recording:
            calls[-1].append((adapter, self.prompt if prompt is None else prompt))
        return ctx_branch(self, adapter, active, prompt)

    monkeypatch.setattr(GroundedLoratorio, "branches", method_branches)
    monkeypatch.setattr(MethodContext, "branch", record)
    full = sd1_composer.run(Job(prompt, grounding=GroundingParams(steps=(0,)), **kw))
    own = sd1_composer.run(Job(prompt, grounding=GroundingParams(steps=(0,), branch_prompts="own"), **kw))
    assert [p for _, p in calls[0]] == [prompt] * 3 and calls[0][0][0] == BASE
    assert calls[1] == [(calls[0][1][0], "a cat on the left"), (calls[0][2][0], "a dog on the right"), (BASE, prompt)]
    assert own.report["unet_samples"] == full.report["unet_samples"]
    assert not np.array_equal(np.asarray(own.image), np.asarray(full.image))
