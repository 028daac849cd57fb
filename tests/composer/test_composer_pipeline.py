"""The wrapper inside stock SD1 / SDXL pipelines: batched == sequential, the method identities, e2e."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from composer import Job, LoraError, LoraRef
from composer.denoiser import BASE, mixed_adapter_batch


def _img(r):
    return np.asarray(r.image).astype(np.float64)


def test_wrapper_passes_for_the_unet(sd1_composer):
    """With the base branch alone the wrapped stock pipeline gives the stock pipeline's image."""
    c = sd1_composer
    r = c.run(Job("a red cube", method="base", steps=3, width=32, height=32, seed=3))
    c.pipe.disable_lora() if c.has_adapters() else None
    stock = c.pipe("a red cube", num_inference_steps=3, width=32, height=32, output_type="pil",
                   generator=torch.Generator("cpu").manual_seed(3)).images[0]
    if c.has_adapters():
        c.pipe.enable_lora()
    assert np.abs(_img(r) - np.asarray(stock).astype(np.float64)).max() == 0


def _install_four(c, sd1_loras):
    """The four formats as active adapters with weights 0.8, 1.0, 0.6, 1.2."""
    loaded = c.loader.load_all([LoraRef(p, w) for p, w in zip(sd1_loras.values(), (0.8, 1.0, 0.6, 1.2))])
    names = [a.adapter for a in loaded]
    c.pipe.enable_lora()
    c.pipe.set_adapters(names, [a.weight for a in loaded])
    return loaded, names, c.pipe.unet


def test_batched_equals_per_adapter_forwards(sd1_composer, sd1_loras):
    """One mixed-adapter UNet call == each adapter's own forward (float32, max abs diff < 1e-4)."""
    c = sd1_composer
    loaded, names, unet = _install_four(c, sd1_loras)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ehs = torch.randn(1, 77, 32, generator=g)
    order = [BASE] + names
    with torch.no_grad(), mixed_adapter_batch(unet, order):
        batched = unet(x.repeat(len(order), 1, 1, 1), 500, encoder_hidden_states=ehs.repeat(len(order), 1, 1)).sample
        single = []
    with torch.no_grad():
        for i, name in enumerate(order):
            if name == BASE:
                unet.disable_adapters()
            else:
                unet.enable_adapters()
                unet.set_adapters([name], [loaded[i - 1].weight])
            single.append(unet(x, 500, encoder_hidden_states=ehs).sample)
        unet.enable_adapters()
    diff = (batched - torch.cat(single)).abs().max().item()
    assert diff < 1e-4, diff
    # And the adapters really act: LoRA outputs differ from the base.
    assert (torch.cat(single[1:]) - single[0]).abs().max() > 1e-3


def test_stacked_batch_equals_peft_mixed_batch(sd1_composer, sd1_loras):
    """The stacked low-rank forward (composer.stacked) == PEFT's mixed batch == each adapter alone,
    over four formats with different ranks and targets (convs included), two samples per adapter."""
    from composer.stacked import stacked_adapter_batch

    c = sd1_composer
    loaded, names, unet = _install_four(c, sd1_loras)
    g = torch.Generator().manual_seed(1)
    order = [n for n in [BASE] + names for _ in range(2)]
    x = torch.randn(len(order), 4, 16, 16, generator=g)
    ehs = torch.randn(len(order), 77, 32, generator=g)
    with torch.no_grad():
        with mixed_adapter_batch(unet, order):
            peft = unet(x, 500, encoder_hidden_states=ehs).sample
        with stacked_adapter_batch(unet, order) as used:
            stacked = unet(x, 500, encoder_hidden_states=ehs).sample
        assert used > 20  # layers served stacked: every attention projection and conv of the four
        assert not any("forward" in m.__dict__ for m in unet.modules())  # restored
        single = []
        for i, name in enumerate(order):
            if name == BASE:
                unet.disable_adapters()
            else:
                unet.enable_adapters()
                unet.set_adapters([name], [loaded[names.index(name)].weight])
            single.append(unet(x[i : i + 1], 500, encoder_hidden_states=ehs[i : i + 1]).sample)
        unet.enable_adapters()
        c.pipe.set_adapters(names, [a.weight for a in loaded])
    assert (stacked - peft).abs().max().item() < 1e-4
    assert (stacked - torch.cat(single)).abs().max().item() < 1e-4
    assert (stacked[2:] - stacked[:2].repeat(4, 1, 1, 1)).abs().max() > 1e-3  # the adapters act


def test_stacked_layout_and_fallback():
    from composer.stacked import Layout, layout_of, stacked_adapter_batch

    assert layout_of([BASE, BASE, "a", "a", "b", "b"]) == Layout(2, ("a", "b"), 2)
    assert layout_of([BASE, BASE, "a", "b", "c"]) == Layout(2, ("a", "b", "c"), 1)  # the probe's layout
    assert layout_of(["a", "a", "b", "b"]) == Layout(0, ("a", "b"), 2)
    assert layout_of([BASE, "a", BASE, "a"]) is None  # base not first
    assert layout_of(["a", "b", "a", "b"]) is None  # an adapter in two runs
    assert layout_of([BASE, "a", "a", "b"]) is None  # uneven runs
    assert layout_of([BASE, BASE]) is None
    with stacked_adapter_batch(torch.nn.Linear(2, 2), ["a", "b", "a"]) as used:
        assert used == 0


def test_batched_equals_sequential_loratorio_sd1(sd1_composer, sd1_loras):
    loras = [sd1_loras["kohya"], sd1_loras["lokr"]]
    a = sd1_composer.run(Job("a cat", loras=loras, steps=3, width=32, height=32, seed=1))
    b = sd1_composer.run(Job("a cat", loras=loras, steps=3, width=32, height=32, seed=1, batched=False))
    assert a.report["unet_calls"] == 3 and b.report["unet_calls"] == 3 * 6
    assert np.abs(_img(a) - _img(b)).max() <= 1  # uint8 images; latents agree to float noise


def test_one_lora_loratorio_is_that_lora_up_to_recentring(sd1_composer, sd1_loras):
    lora = [sd1_loras["peft"]]
    kw = dict(steps=3, width=32, height=32, seed=2)
    lt = sd1_composer.run(Job("a dog", loras=lora, method="loratorio", **kw, params=__import__("composer").LoratorioParams(lam=0.0)))
    alone = sd1_composer.run(Job("a dog", loras=lora, method="merge", **kw))
    assert np.abs(_img(lt) - _img(alone)).max() <= 1


def test_n_copies_of_one_lora_equal_that_lora(sd1_composer, sd1_loras, tmp_path):
    import shutil

    copy = tmp_path / "copy_of_kohya.safetensors"
    shutil.copy(sd1_loras["kohya"], copy)
    kw = dict(steps=3, width=32, height=32, seed=4)
    one = sd1_composer.run(Job("a tree", loras=[sd1_loras["kohya"]], **kw))
    two = sd1_composer.run(Job("a tree", loras=[sd1_loras["kohya"], str(copy)], **kw))
    assert np.abs(_img(one) - _img(two)).max() <= 1


def test_sd1_e2e_three_formats_png_parameters(sd1_composer, sd1_loras, tmp_path):
    prompt = f"a castle <lora:{sd1_loras['loha']}:0.7>"
    r = sd1_composer.run(Job(prompt, loras=[sd1_loras["kohya"], sd1_loras["lokr"] + ":0.5"], steps=3,
                             width=40, height=24, seed=5, params=__import__("composer").LoratorioParams(p=3), method="loratorio"))
    assert r.image.size == (40, 24)
    out = tmp_path / "x.png"
    r.save(str(out))
    text = Image.open(out).text["parameters"]
    assert text.splitlines()[0] == "a castle <lora:kohya_locon:1> <lora:lokr:0.5> <lora:loha:0.7>"
    assert "Steps: 3, Sampler: DDIM, CFG scale: 7.5, Seed: 5, Size: 40x24" in text
    assert 'Lora hashes: "kohya_locon: ' in text and "Composition: loratorio" in text
    # 20x12 latents with p=3: a 4x7 grid with partial border patches, weights sum to 1.
    assert r.weights[0].shape == (3, 4, 7)
    assert torch.allclose(r.weights[0].sum(0), torch.ones(4, 7), atol=1e-5)
    wm = r.weights_map()
    assert wm.size[1] > wm.size[0] / 3
    # Seeded runs are reproducible.
    again = sd1_composer.run(Job(prompt, loras=[sd1_loras["kohya"], sd1_loras["lokr"] + ":0.5"], steps=3,
                                 width=40, height=24, seed=5, params=__import__("composer").LoratorioParams(p=3), method="loratorio"))
    assert np.array_equal(_img(r), _img(again))


@pytest.mark.parametrize("method,calls,samples", [("merge", 3, 6), ("switch", 3, 6), ("composite", 3, 12), ("base", 3, 6)])
def test_baselines_run_in_the_same_loop(sd1_composer, sd1_loras, method, calls, samples):
    r = sd1_composer.run(Job("a boat", loras=[sd1_loras["kohya"], sd1_loras["peft"]], method=method,
                             steps=3, width=32, height=32, seed=6))
    assert (r.report["unet_calls"], r.report["unet_samples"]) == (calls, samples)


def test_wrong_family_refused_before_denoising(sd1_composer, sdxl_loras):
    with pytest.raises(LoraError, match="cross-attention width 64"):
        sd1_composer.run(Job("x", loras=[sdxl_loras["peft"]], steps=2, width=32, height=32))


def test_sdxl_e2e_two_and_three_formats(sdxl_composer, sdxl_loras, sd1_loras, tmp_path):
    kw = dict(steps=3, width=32, height=32, seed=7)
    two = sdxl_composer.run(Job("a lighthouse", loras=[sdxl_loras["kohya"], sdxl_loras["peft"]], **kw))
    three = sdxl_composer.run(Job("a lighthouse", loras=list(sdxl_loras.values()), **kw))
    seq = sdxl_composer.run(Job("a lighthouse", loras=list(sdxl_loras.values()), batched=False, **kw))
    assert three.report["unet_samples"] == 3 * 8 and seq.report["unet_calls"] == 3 * 8
    assert np.abs(_img(three) - _img(seq)).max() <= 1
    assert np.abs(_img(two) - _img(three)).max() > 0
    three.save(str(tmp_path / "xl.png"))
    assert "Sampler: Euler" in Image.open(tmp_path / "xl.png").text["parameters"]
    with pytest.raises(LoraError, match="refused"):
        sdxl_composer.run(Job("x", loras=[sd1_loras["peft"]], **kw))


def test_branch_encodings_follow_text_encoder_parts(sd1_composer, sd1_loras):
    """A LoRA's text-encoder part shapes its own branch's prompt encoding (as the pipeline's own
    set_adapters would); a LoRA without one shares the base encoding instead of recomputing it."""
    c = sd1_composer
    with_te, without = c.loader.load_all([LoraRef(sd1_loras["kohya"], 0.8), LoraRef(sd1_loras["peft"], 1.0)])
    assert with_te.text_encoder and not without.text_encoder
    enc: dict = {}
    base = c.branch(BASE, "a red cube", "", None, enc)
    te = c.branch(with_te.adapter, "a red cube", "", [with_te], enc)
    plain = c.branch(without.adapter, "a red cube", "", [without], enc)
    assert plain.cond is base.cond and len(enc) == 2
    assert (te.cond - base.cond).abs().max() > 1e-4
    with torch.no_grad():
        c.pipe.enable_lora()
        c.pipe.set_adapters([with_te.adapter], [0.8])
        assert torch.allclose(te.cond, c._encode("a red cube", "")[0])
        c.pipe.disable_lora()
        assert torch.allclose(base.cond, c._encode("a red cube", "")[0])
        c.pipe.enable_lora()


def test_stacked_forward_held_for_the_run_and_taken_out_after(sd1_composer, sd1_loras, monkeypatch):
    """The stacked forward is installed once per generation (not once per step: entering it walks
    every module) and no layer keeps it after the run, even when the run fails."""
    import composer.denoiser as dn

    entered = []
    real = dn.stacked_adapter_batch

    kept = []  # keeps each context alive, so that only an explicit release (not GC) takes it out

    def counting(model, adapters, plans=None):
        entered.append(tuple(adapters))
        kept.append(real(model, adapters, plans))
        return kept[-1]

    monkeypatch.setattr(dn, "stacked_adapter_batch", counting)
    unet = sd1_composer.pipe.unet
    loras = [sd1_loras["kohya"], sd1_loras["peft"]]
    sd1_composer.run(Job("a cat", loras=loras, steps=4, width=32, height=32, seed=1))
    assert len(entered) == 1 and len(entered[0]) == 6  # base, 2 LoRAs; uncond and cond each
    assert not any("forward" in m.__dict__ for m in unet.modules())

    def boom(*a, **k):
        raise RuntimeError("stop")

    from composer.methods.loratorio import Loratorio

    monkeypatch.setattr(Loratorio, "combine", boom)
    with pytest.raises(RuntimeError, match="stop"):
        sd1_composer.run(Job("a cat", loras=loras, steps=4, width=32, height=32, seed=1))
    assert len(entered) == 2
    assert not any("forward" in m.__dict__ for m in unet.modules())


def test_sdxl_in_bfloat16(sdxl_dir, sdxl_composer, sdxl_loras):
    """SDXL in half precision (bfloat16, what this CPU runs; a GPU runs float16): the two text
    encoders, added_cond_kwargs and three LoRA formats all run in it, and the image is the float32
    one up to rounding."""
    from composer import Composer

    half = Composer.from_pretrained(sdxl_dir, device="cpu", dtype="bfloat16")
    kw = dict(loras=list(sdxl_loras.values()), steps=3, width=32, height=32, seed=7)
    h = half.run(Job("a lighthouse", **kw))
    f = sdxl_composer.run(Job("a lighthouse", **kw))
    assert h.report["dtype"] == "bfloat16" and f.report["dtype"] == "float32"
    assert half.pipe.unet.dtype == torch.bfloat16
    assert np.abs(_img(h) - _img(f)).mean() < 3 and _img(h).std() > 1


def test_switch_rotates_one_lora_at_a_time(sd1_composer, sd1_loras):
    """Switch runs exactly one LoRA per step, rotating every ``switch_every`` steps: the UNet's
    active adapter at each step follows the rotation, and with one LoRA for the whole run it is
    that LoRA merged alone."""
    c = sd1_composer
    loras = [sd1_loras["kohya"], sd1_loras["peft"]]
    kw = dict(width=32, height=32, seed=3)
    for every, pattern in ((1, [0, 1, 0, 1]), (2, [0, 0, 1, 1])):
        active = []
        r = c.run(Job("a road", loras=loras, method="switch", switch_every=every, steps=4, **kw),
                  callback=lambda info: active.append(tuple(c.pipe.unet.active_adapters())))
        names = [a["adapter"] for a in r.report["loras"]]
        assert active == [(names[k],) for k in pattern]
        assert [int(w.flatten().argmax()) for w in r.weights] == pattern
        assert r.report["options"] == {"switch_every": every}
    whole = c.run(Job("a road", loras=loras, method="switch", switch_every=3, steps=3, **kw))
    alone = c.run(Job("a road", loras=loras[:1], method="merge", steps=3, **kw))
    assert np.abs(_img(whole) - _img(alone)).max() <= 1


def test_composite_averages_the_branches(sd1_composer, sd1_loras, tmp_path):
    """Composite's prediction is the mean of its LoRA branches' at every step (checked on the
    real predictions through the observation callback), so two copies of one LoRA are that LoRA."""
    import shutil

    seen = []
    loras = [sd1_loras["kohya"], sd1_loras["peft"]]
    sd1_composer.run(Job("a bridge", loras=loras, method="composite", steps=3, width=32, height=32, seed=2),
                     callback=seen.append)
    assert len(seen) == 3
    for info in seen:
        assert info["eps_c"].shape[0] == 2 and not torch.equal(info["eps_c"][0], info["eps_c"][1])
        assert torch.allclose(info["cond"], info["eps_c"].mean(0)) and torch.allclose(info["uncond"], info["eps_u"].mean(0))
    copy = tmp_path / "copy.safetensors"
    shutil.copy(sd1_loras["peft"], copy)
    kw = dict(steps=3, width=32, height=32, seed=2)
    two = sd1_composer.run(Job("a bridge", loras=[sd1_loras["peft"], str(copy)], method="composite", **kw))
    one = sd1_composer.run(Job("a bridge", loras=[sd1_loras["peft"]], method="merge", **kw))
    assert np.abs(_img(two) - _img(one)).max() <= 1


def test_observation_callback_sees_loratorio_similarities(sd1_composer, sd1_loras):
    seen = []
    r = sd1_composer.run(Job("a bird", loras=[sd1_loras["kohya"], sd1_loras["peft"]], steps=2, width=32, height=32),
                         callback=seen.append)
    assert [i["step"] for i in seen] == [0, 1]
    sim = seen[0]["similarity"]
    assert sim.shape == (2, 1, 16, 16) and torch.all(sim <= 1.0001)
    assert torch.allclose(seen[1]["weights"][:, 0], r.weights[1])
