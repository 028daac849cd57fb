"""Retrieve -> probe -> prune -> compose on the tiny SD1 pipeline and a registry of generated LoRAs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from composer.relevance import combine_scores, probe_scores, prune, relative
from composer.retrieve import SelectionError

FAST = dict(steps=4, probe_steps=2, width=32, height=32)


# ---------------------------------------------------------------- maths, hand-worked
def test_probe_scores_far_coverage_mass():
    # 2 candidates, 1 step, 1 image, 1x2 patches: A diverges on patch 0 (s=0), B is the identity (s=1).
    sim = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 1.0]]]])
    s = probe_scores(sim, k=1)
    assert s.far.tolist() == [0.5, 0.0]
    assert s.coverage.tolist() == [1.0, 0.0]  # ties on patch 1 go to the lower index
    assert s.score.tolist() == [0.5, 0.0]
    assert probe_scores(sim, k=None).coverage.tolist() == [1.0, 1.0]


def test_combine_is_geometric_and_pool_is_probe_only():
    probe, retr = torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.2, 0.8, 0.8])
    c = combine_scores(probe, retr, 0.5)
    assert torch.allclose(c, torch.tensor([(1 * 0.25) ** 0.5, (0.5 * 1.0) ** 0.5, 0.0]))
    assert torch.equal(combine_scores(probe, None, 0.5), relative(probe))
    with pytest.raises(ValueError, match="retrieval weight"):
        combine_scores(probe, retr, 1.5)


def test_prune_top_k_threshold_and_reasons():
    keep, dropped = prune(torch.tensor([0.1, 1.0, 0.6, 0.9]), k=2, threshold=0.5)
    assert keep == [1, 3]
    assert "rank 3 of 4" in dropped[2] and "below threshold" in dropped[0]
    assert prune(torch.tensor([0.0, 0.0]), k=1)[0] == [0]  # the best always survives


# ---------------------------------------------------------------- retrieval
def test_retrieve_keeps_family_and_files(auto, dump):
    cands = auto.retrieve("a kiki on the left, checkerboard background", candidates=16)
    names = [c.name for c in cands]
    assert names[:2] in (["Kiki LoRA", "Checkerboard LoRA"], ["Checkerboard LoRA", "Kiki LoRA"])
    assert "Kiki Castle SD15" not in names  # sd1 (width 768) is not the tiny pipeline's family
    assert all(c.base_family == auto.family == "other" and c.retrieval_score is not None for c in cands)


# ---------------------------------------------------------------- probe, prune, compose
def test_probe_ranks_active_lora_above_identity(auto, dump):
    ranked = auto.probe("a kiki on the left", pool=[dump["inert"], dump["kiki"]], steps=4, probe_steps=2,
                        width=32, height=32, probe_top_k=1)
    by = {c.name: c for c in ranked}
    assert ranked[0].name == "kiki"
    assert by["kiki"].probe["far"] > 100 * by["inert"].probe["far"]
    assert by["kiki"].probe["score"] > by["inert"].probe["score"] and by["inert"].combined < 0.05


def test_probe_start_is_a_fraction_of_the_steps_that_leaves_room_for_the_probe():
    from composer.params import SelectionParams

    assert SelectionParams().probe_start_step(25) == 20  # round(0.8 x 25)
    assert SelectionParams().probe_start_step(50) == 40
    assert SelectionParams(probe_start=0.24).probe_start_step(25) == 6
    assert SelectionParams(probe_steps=2).probe_start_step(4) == 2  # round(3.2) leaves no room for P: 4 - 2
    assert SelectionParams(probe_steps=3).probe_start_step(3) == 0  # no room: the probe starts at once
    assert SelectionParams(probe_start=0.9, probe_steps=3).probe_start_step(10) == 7


def test_probe_measures_each_candidate_on_the_base_path(auto, dump):
    """The probe's latents follow the base model (the first S steps alone, then beside every
    candidate), so a candidate's strength does not depend on which other candidates are probed:
    the same kiki LoRA measures the same beside an inert LoRA as beside a strong stripes LoRA."""
    kw = dict(steps=4, probe_steps=2, probe_start=0.5, width=32, height=32, seed=5)
    with_inert = {c.name: c for c in auto.probe("a kiki on the left, stripes", pool=[dump["kiki"], dump["inert"]], **kw)}
    with_stripes = {c.name: c for c in auto.probe("a kiki on the left, stripes", pool=[dump["kiki"], dump["stripes"]], **kw)}
    a, b = with_inert["kiki"].probe["strength"], with_stripes["kiki"].probe["strength"]
    assert a > 0.01 and abs(a - b) < 1e-4 * a
    # and the probe starts later along the same path: a different step, a different measurement
    early = {c.name: c for c in auto.probe("a kiki on the left, stripes", pool=[dump["kiki"], dump["inert"]],
                                           **(kw | {"probe_start": 0.0}))}
    assert abs(early["kiki"].probe["strength"] - a) > 1e-3 * a


def test_compose_from_registry_report_and_png(auto, tmp_path):
    r = auto.compose("a kiki on the left, checkerboard background, stripes, inert", k=2, threshold=0.0, seed=3, **FAST)
    rep = r.report
    sel = rep["selection"]
    assert sel["mode"] == "retrieval" and len(sel["survivors"]) == 2
    assert len(sel["candidates"]) == 4  # all four named; the search finds only what the prompt names
    for c in sel["candidates"]:  # every decision, with its numbers and reason
        assert c["retrieval_score"] is not None and c["probe"] is not None and c["combined"] is not None
        assert c["reason"] and c["kept"] == (c["name"] in sel["survivors"])
    assert {d["name"] for d in sel["dropped"]} == {c["name"] for c in sel["candidates"]} - set(sel["survivors"])
    assert "Inert LoRA" not in sel["survivors"]
    assert [x["name"] for x in rep["loras"]] == sel["survivors"]
    # the base alone for S = min(round(0.8 x 4), 4 - 2) = 2 steps, then 2 probe steps with every candidate
    assert sel["probe"]["steps"] == 2 and sel["probe"]["start"] == 2 and sel["probe"]["unet_calls"] == 4
    assert sel["probe"]["unet_samples"] == 2 * 2 + 2 * (4 + 2)  # K + 1 conditional, 1 base unconditional
    assert rep["unet_samples"] == 4 * 2 * 3  # compose: 4 steps x 2 halves x (base + 2)
    assert rep["unet_samples_total"] == 16 + 24
    assert set(sel["seconds"]) >= {"retrieve", "load", "probe", "compose", "total"}
    assert set(sel["mean_patch_weights"]) == set(sel["survivors"])
    path = tmp_path / "auto.png"
    r.save(str(path))
    text = Image.open(path).text
    assert "LoRA selection: retrieval" in text["parameters"] and 'Candidates: "' in text["parameters"]
    assert all(f"<lora:{n}:1>" in text["parameters"] for n in sel["survivors"])
    assert json.loads(text["loraregistry"])["selection"]["survivors"] == sel["survivors"]


def test_pruning_keeps_at_most_k(auto):
    for k in (1, 3):
        sel = auto.select("a kiki on the left, checkerboard background, stripes", k=k, threshold=0.0, seed=0,
                          steps=4, probe_steps=1, width=32, height=32)
        assert len(sel.survivors) == k and sum(c.kept for c in sel.candidates) == k


def test_pool_bypasses_retrieval(auto, dump, monkeypatch):
    def no_search(*a, **kw):
        raise AssertionError("pool must not search the registry")

    monkeypatch.setattr(auto.registry, "search", no_search)
    sel = auto.select("anything at all", pool=[dump["stripes"], "kiki", dump["inert"]], k=2, threshold=0.0,
                      steps=4, probe_steps=1, width=32, height=32)
    assert sel.mode == "pool" and sel.retrieval is None
    assert {c.name for c in sel.candidates} == {"stripes", "Kiki LoRA", "inert"}
    assert all(c.retrieval_score is None for c in sel.candidates) and len(sel.survivors) == 2


def test_cache_avoids_second_read(sd1_dir, registry, dump):
    from composer.auto import AutoComposer

    ac = AutoComposer.from_pretrained(sd1_dir, registry, device="cpu")
    ac.compose("x", pool=[dump["kiki"], dump["stripes"]], k=2, **FAST)
    assert ac.reads == 2
    ac.compose("y", pool=[dump["stripes"], dump["checkerboard"]], k=2, **FAST)
    assert ac.reads == 3  # stripes came from the cache
    # A budget of about one LoRA: the least recently used adapters go, and are read again.
    one = ac.composer.loader.lru.total_bytes // 3 + 1
    ac.composer.loader.lru.max_bytes = one
    ac.compose("z", pool=[dump["checkerboard"]], k=1, **FAST)
    assert ac.reads == 3 and ac.composer.loader.lru.keys() == [ac.composer.loader.lru.keys()[-1]]
    assert len(ac.composer.loader.lru) == 1
    ac.compose("w", pool=[dump["kiki"]], k=1, **FAST)
    assert ac.reads == 4  # evicted earlier: read again
    assert set(ac.composer.pipe.unet.peft_config) == {a.adapter for a in ac.composer.loader._by_path.values()}


# ---------------------------------------------------------------- bad requests fail early
def test_bad_requests(auto, dump, sd1_dir, tmp_path):
    from composer.auto import AutoComposer
    from loraregistry.api import Registry

    reads = auto.reads
    with pytest.raises(SelectionError, match="larger than the pool of 2"):
        auto.compose("a kiki", pool=[dump["kiki"], dump["stripes"]], k=3, **FAST)
    with pytest.raises(SelectionError, match="no-such-lora"):
        auto.compose("a kiki", pool=["no-such-lora", "9999", dump["kiki"]], **FAST)
    with pytest.raises(SelectionError, match="larger than the 2 candidates"):
        auto.compose("a kiki", candidates=2, k=3, **FAST)
    with pytest.raises(SelectionError, match="a sd1 LoRA; the pipeline.s family is other"):
        auto.compose("a kiki", pool=[dump["sd15"], dump["kiki"]], **FAST)
    with pytest.raises(SelectionError, match="<lora:"):
        auto.compose("a kiki <lora:kiki:1>", **FAST)
    with pytest.raises(SelectionError, match="probe steps"):
        auto.compose("a kiki", steps=2, probe_steps=3)
    assert auto.reads == reads  # none of them read a LoRA: all refused before loading
    empty = AutoComposer(auto.composer, Registry.open(f"sqlite:///{tmp_path / 'empty.db'}"))
    with pytest.raises(SelectionError, match="is empty"):
        empty.compose("a kiki", **FAST)
    only_sd15 = Registry.open(f"sqlite:///{tmp_path / 'sd15.db'}")
    d = tmp_path / "d"
    d.mkdir()
    import shutil

    shutil.copy(dump["sd15"], d)
    shutil.copy(dump["sd15"].replace(".safetensors", ".civitai.json"), d)
    only_sd15.ingest(str(d))
    with pytest.raises(SelectionError, match="family 'other'.*sd1: 1"):
        AutoComposer(auto.composer, only_sd15).compose("kiki castle", **FAST)


def test_replayed_steps_reproduce_the_run(auto, dump):
    """Replay mechanics: a run given its own first P guided predictions gives the same image
    without calling the UNet for those steps."""
    from composer.denoiser import BASE, MultiLoraDenoiser, installed
    from composer.methods.loratorio import Loratorio
    from composer.params import LoratorioParams

    c = auto.composer
    from composer.loras import LoraRef

    loras = c.loader.load_all([LoraRef(dump[n], 1.0) for n in ("kiki", "stripes")])
    prompt = "a kiki on the left, stripes background"
    branches = [c.branch(BASE, prompt, "", None)] + [c.branch(a.adapter, prompt, "", [a]) for a in loras]
    c.pipe.enable_lora()
    c.pipe.set_adapters([a.adapter for a in loras], [1.0, 1.0])

    def run(**kw):
        d = MultiLoraDenoiser(c.pipe.unet, branches, Loratorio(LoratorioParams(2, 0.05, 0.5)).combine, **kw)
        with torch.inference_mode(), installed(c.pipe, d):
            out = c.pipe(prompt_embeds=branches[0].cond, negative_prompt_embeds=branches[0].uncond, num_inference_steps=4,
                         guidance_scale=7.5, height=32, width=32, output_type="latent",
                         generator=torch.Generator().manual_seed(5)).images
        return out, d

    full, d_full = run(record=True)
    assert d_full.unet_calls == 4 and len(d_full.outputs) == 4
    replayed, d_re = run(replay=d_full.outputs[:2])
    assert d_re.unet_calls == 2
    assert torch.equal(replayed, full)
    with pytest.raises(ValueError, match="replayed step 0 has shape"):
        run(replay=[d_full.outputs[0][:1]])


def test_compose_can_reuse_the_probe_steps(auto):
    prompt = "a kiki on the left, checkerboard background, stripes, inert"
    kw = FAST | {"probe_start": 0.25}  # S = 1: one step of 4 is left to compose
    plain = auto.compose(prompt, k=2, threshold=0.0, seed=3, **kw)
    reused = auto.compose(prompt, k=2, threshold=0.0, seed=3, reuse_probe=True, **kw)
    assert reused.report["selection"]["survivors"] == plain.report["selection"]["survivors"]
    # the probe's 1 base step and 2 probe steps are replayed
    assert plain.report["replayed_steps"] == 0 and reused.report["replayed_steps"] == 3
    # compose: the 3 replayed steps cost nothing; 1 step x 2 halves x (base + 2) remains
    assert reused.report["unet_samples"] == 1 * 2 * 3 and plain.report["unet_samples"] == 4 * 2 * 3
    assert reused.report["unet_samples_total"] == plain.report["unet_samples_total"] - 3 * 2 * 3


def test_unsupported_candidate_is_dropped_with_its_reason(sd1_dir, dump, tmp_path):
    """A retrieved candidate the composer cannot apply (a LoKr with Tucker-decomposed conv factors)
    is dropped with the reason, and the composition goes on with the others; one bad file among
    thousands must not fail a compose."""
    import shutil

    from composer_tiny import write_lokr
    from diffusers import UNet2DConditionModel
    from loras import civitai_sidecar
    from safetensors.torch import load_file, save_file

    from composer.auto import AutoComposer
    from loraregistry.api import Registry

    d = tmp_path / "dump"
    d.mkdir()
    for name in ("kiki", "stripes"):
        shutil.copy(dump[name], d)
        shutil.copy(dump[name].replace(".safetensors", ".civitai.json"), d)
    unet = UNet2DConditionModel.from_pretrained(sd1_dir, subfolder="unet")
    tucker = d / "kiki_tucker.safetensors"
    sd = load_file(write_lokr(tucker, unet, convs=True))
    conv = next(k.rsplit(".", 1)[0] for k in sd if "conv1" in k)
    sd[f"{conv}.lokr_t2"] = torch.ones(2, 2, 3, 3)
    save_file(sd, str(tucker))
    civitai_sidecar(tucker, model_id=300, version_id=400, name="Kiki Tucker LoKr", trained_words=["kiki"],
                    description="an orange ring character, LoKr with Tucker factors")
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    reg.ingest(str(d))
    ac = AutoComposer.from_pretrained(sd1_dir, reg, device="cpu")
    r = ac.compose("a kiki on the left, stripes background", k=2, threshold=0.0, seed=1, **FAST)
    sel = r.report["selection"]
    dropped = {x["name"]: x["reason"] for x in sel["dropped"]}
    assert "Tucker" in dropped["Kiki Tucker LoKr"] and "cannot be loaded" in dropped["Kiki Tucker LoKr"]
    assert sorted(sel["survivors"]) == ["Kiki LoRA", "Stripes LoRA"]
    reg.close()


def test_prune_by_phrase_keeps_one_per_phrase_drops_inert_and_reports_unserved():
    from composer.relevance import prune_by_phrase

    scores = torch.tensor([0.9, 0.5, 0.8, 0.01, 0.02, 0.3])
    power = torch.tensor([0.05, 0.04, 0.1, 1e-4, 1e-4, 0.03])  # how much each moves the prediction
    phrases = ["kiki", "kiki", "checkerboard background", "checkerboard background", "halo", None]
    keep, dropped, unserved = prune_by_phrase(scores, phrases, strength=power)
    assert keep == [0, 2, 5]  # the best of each phrase, whatever the other phrases scored
    assert "another candidate for 'kiki'" in dropped[1] and "inert" in dropped[3] and "inert" in dropped[4]
    assert "close call" not in dropped[1]  # 0.5 against 0.9: a clear choice
    _, dropped, _ = prune_by_phrase(torch.tensor([0.9, 0.85]), ["kiki", "kiki"])
    assert "close call" in dropped[1] and "--lora" in dropped[1]
    assert unserved == ["halo"]  # its only candidate is inert: left to the base model
    two, _, _ = prune_by_phrase(scores, phrases, per_phrase=2, strength=power)
    assert set(two) == {0, 1, 2, 5}
    # A weak object is not dropped for diverging less than a strong background: they do not compete.
    keep, _, _ = prune_by_phrase(torch.tensor([1.0, 0.2]), ["checkerboard background", "kiki"], strength=torch.tensor([0.1, 0.01]))
    assert keep == [0, 1]
    keep, dropped, _ = prune_by_phrase(scores, phrases, excluded={0: "a loose match"})
    assert keep[:2] == [2, 1] and dropped[0] == "a loose match"  # the next candidate of the phrase serves it
    with pytest.raises(ValueError):
        prune_by_phrase(scores, phrases[:2])


def test_phrase_scores_prefer_the_candidate_its_peers_agree_with():
    from composer.relevance import agreement, eligible, phrase_scores, strength

    g = torch.Generator().manual_seed(0)
    kiki, mimi, base = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    # (P=1, N, B=1, ...): the kiki LoRA, a weaker copy, a mislabelled one (draws mimi, stronger), an inert copy
    deltas = torch.stack([kiki, 0.3 * kiki + 0.05 * mimi, 1.5 * mimi, 1e-4 * kiki]).unsqueeze(1).unsqueeze(0)
    power, agree = strength(deltas, base), agreement(deltas)
    assert power[2] > power[0] > power[1] > 1000 * power[3]
    assert torch.allclose(agree.diagonal(), torch.ones(4)) and agree[0, 1] > 0.9 and abs(float(agree[0, 2])) < 0.3
    phrases = ["kiki"] * 4
    active = [bool(p >= 0.002 * power.max()) for p in power]
    scores = phrase_scores(power, agree, phrases, active)
    assert int(scores[:3].argmax()) == 0  # the strongest in line with its peers, not the strongest
    assert torch.equal(phrase_scores(power, agree, ["a", "b", "c", "d"]), power)  # alone in a phrase: its strength
    # As measured on ToyWorld: a mislabelled LoRA 1.8x as strong, in line with no peer; by the plain
    # product it wins, with agreement squared (the default) the LoRA its peers agree with does.
    power = torch.tensor([1.0, 0.3, 1.8])
    agree = torch.tensor([[1.0, 0.7, 0.3], [0.7, 1.0, 0.4], [0.3, 0.4, 1.0]])
    assert int(phrase_scores(power, agree, ["kiki"] * 3, agreement_power=1.0).argmax()) == 2
    assert int(phrase_scores(power, agree, ["kiki"] * 3).argmax()) == 0
    # As measured on ToyWorld (the kiki phrase, seed 0 of "a kiki on the left, stripes background"):
    # the mislabelled LoRA leans to the weak copy (0.20) more than to the kiki (0.02). Counted as a
    # full vote it made the weak copy win; weighted by its own agreement with its peers, it does not.
    power = torch.tensor([0.323, 0.156, 0.120])  # mislabelled, kiki, weak kiki
    agree = torch.tensor([[1.0, 0.02, 0.20], [0.02, 1.0, 0.75], [0.20, 0.75, 1.0]])
    scores = phrase_scores(power, agree, ["kiki"] * 3)
    assert int(scores.argmax()) == 1
    plain = power * torch.tensor([(0.02 + 0.20) / 2, (0.02 + 0.75) / 2, (0.20 + 0.75) / 2]) ** 2
    assert int(plain.argmax()) == 2  # the unweighted mean, as before: the weak copy
    from composer.relevance import concept_of

    # Two halo phrases: every halo candidate competes once (keyed by the typed trigger), so one halo LoRA serves both.
    assert concept_of("halo on the left", "trigger", ("halo",)) == concept_of("halo on the right", "trigger", ("Halo",)) == "halo"
    assert concept_of("halo on the left", "semantic", ("halo",)) == "halo on the left"
    assert concept_of("halos", "trigger", ("halo",)) == "halos"  # whole words only
    reasons = eligible(["kiki", "kiki", "dark background"], ["trigger", "semantic", "semantic"], [0.5, 0.6, 0.2], 0.4)
    assert set(reasons) == {1, 2} and "trigger or name" in reasons[1] and "loose match" in reasons[2]


def test_selection_by_phrase_in_the_report(auto):
    sel = auto.select("a kiki on the left, checkerboard background, inert", threshold=0.0, seed=0, **FAST)
    rep = sel.report()
    assert rep["per_phrase"] == 1
    assert "Inert LoRA" not in rep["survivors"] and {"Kiki LoRA", "Checkerboard LoRA"} <= set(rep["survivors"])
    assert rep["unserved_phrases"] == ["inert"]  # its only candidate shows no effect
    assert "Left to the base model" in sel.parameters()
    old = auto.select("a kiki on the left, checkerboard background, inert", threshold=0.0, seed=0, per_phrase=None, k=2, **FAST)
    assert old.report()["per_phrase"] is None and len(old.survivors) == 2


def test_candidates_retrieval_rules_out_are_neither_loaded_nor_probed(auto):
    """By phrase, a candidate retrieval alone rules out (a semantic neighbour where a trigger was
    typed, a loose match) is dropped whatever the probe says: it is not probed, and the survivors
    are those of probing every candidate (``probe_all``)."""
    prompt = "a kiki on the left, dark background"  # the checkerboard LoRA: a loose match for "dark background"
    sel = auto.select(prompt, seed=0, **FAST)
    every = auto.select(prompt, seed=0, probe_all=True, **FAST)
    unprobed = [c for c in sel.candidates if c.probe is None and "cannot be loaded" not in (c.reason or "")]
    assert unprobed and all("not probed" in c.reason and not c.kept for c in unprobed)
    assert all(c.probe is not None for c in every.candidates if "cannot be loaded" not in (c.reason or ""))
    assert [c.name for c in sel.survivors] == [c.name for c in every.survivors] == ["Kiki LoRA"]
    assert sel.probe is not None  # one candidate left, probed all the same: is it inert?
    assert sel.probe.unet_samples < every.probe.unet_samples


def test_a_prompt_no_lora_serves_is_drawn_by_the_base_model(auto):
    """Every candidate a loose match (here: no semantic match counts): nothing is kept, the report
    names the phrases left to the base, and the image is the base model's."""
    from composer import Job

    prompt = "a yellow triangle in the center, light background"
    r = auto.compose(prompt, seed=3, min_semantic=1.01, **FAST)
    assert r.selection.survivors == [] and r.report["method"] == "base"
    assert r.report["selection"]["unserved_phrases"] and r.report["loras"] == []
    base = auto.composer.run(Job(prompt, method="base", seed=3, steps=4, width=32, height=32))
    assert np.array_equal(np.asarray(r.image), np.asarray(base.image))


def test_the_probes_base_steps_install_the_mixed_batch_once(auto, monkeypatch):
    """The base alone before the probe's steps runs as "__base__" in PEFT's mixed batch; installing
    it walks every module, so it is held from one UNet call to the next (once, not once a step)."""
    import contextlib

    import composer.denoiser as den

    entered = []
    real = den.mixed_adapter_batch

    @contextlib.contextmanager
    def counting(model, names):
        entered.append(tuple(names))
        with real(model, names):
            yield

    monkeypatch.setattr(den, "mixed_adapter_batch", counting)
    sel = auto.select("a kiki on the left, checkerboard background", seed=0, probe_start=0.75,
                      **{**FAST, "steps": 8})
    assert sel.probe is not None and sel.probe.start == 6
    assert len([n for n in entered if set(n) == {den.BASE}]) == 1, entered
