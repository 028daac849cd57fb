"""fusion: object LoRAs draw on latents of their own for the first steps, then their regions are
pasted into the composition (composer.methods.fusion)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from composer import Job
from composer.methods.fusion import departure, object_prompts, paste, riders
from composer.params import GroundingParams

PROMPT = "a cat on the left, a forest"
# Most tests below count and compare per step, as each own trajectory runs on every step (own_stride=1);
# test_own_stride_* covers the default stride.


def test_paste_takes_each_own_latent_inside_its_mask():
    x = torch.zeros(1, 2, 2, 4)
    a, b = torch.full_like(x, 1.0), torch.full_like(x, 3.0)
    masks = torch.zeros(2, 1, 2, 4)
    masks[0, :, :, 0] = 1.0  # a owns column 0
    masks[1, :, :, 3] = 0.5  # b half-owns column 3
    out = paste(x, [a, b], masks)
    assert torch.equal(out[..., 0], torch.ones(1, 2, 2))
    assert torch.equal(out[..., 1:3], torch.zeros(1, 2, 2, 2))
    assert torch.allclose(out[..., 3], torch.full((1, 2, 2), 1.5))
    assert torch.equal(paste(x, [a, b], torch.zeros(2, 1, 2, 4)), x)  # no region: the composition unchanged


def test_departure_is_where_the_images_differ():
    base = torch.randn(1, 4, 3, 3)
    other = base.clone()
    other[0, :, 1, 2] += 2.0
    d = departure(other, base)
    assert d.shape == (1, 3, 3)
    assert d[0, 1, 2] == 2.0 and d.sum() == 2.0


def _latent_hw(composer, size: int) -> tuple[int, int]:
    f = composer.pipe.vae_scale_factor
    return size // f, size // f


def test_fusion_without_an_object_is_grounded_loratorio(categorised):
    composer, paths = categorised
    kw = dict(loras=[paths["hat"], paths["forest"]], steps=3, width=32, height=32, seed=3,
              grounding=GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=2))
    ours = composer.run(Job(PROMPT, method="fusion", **kw))
    theirs = composer.run(Job(PROMPT, method="grounded-loratorio", **kw))
    assert np.array_equal(np.asarray(ours.image), np.asarray(theirs.image))
    assert ours.report["unet_samples"] == theirs.report["unet_samples"]


@pytest.mark.parametrize("fuse_at, plain, own_prompt", [
    (4, None, PROMPT),  # pasted after the last step; the background phrase as written
    (2, "light background", "a cat on the left, light background"),  # pasted at step 2, again after the last
])
def test_an_object_that_owns_the_whole_image_at_the_last_step_is_that_lora_alone(categorised, fuse_at, plain,
                                                                                 own_prompt):
    """Pasted after the last step with the object's mask all ones, the image is the object LoRA's own
    trajectory: the LoRA alone (Merge of one LoRA) on its own prompt (the background LoRA's phrase
    read as ``plain_background``), seed and guidance."""
    composer, paths = categorised
    h, w = _latent_hw(composer, 32)
    masks = torch.zeros(2, 1, h, w)
    masks[0] = 1.0  # cat everywhere, forest nowhere
    kw = dict(steps=4, width=32, height=32, seed=11, cfg=3.0)
    fused = composer.run(Job(PROMPT, loras=[paths["cat"], paths["forest"]], method="fusion", masks=masks,
                             grounding=GroundingParams(own_stride=1, fuse_at=fuse_at, plain_background=plain), **kw))
    alone = composer.run(Job(own_prompt, loras=[paths["cat"]], method="merge", **kw))
    composed = composer.run(Job(PROMPT, loras=[paths["cat"], paths["forest"]], method="grounded-loratorio",
                                masks=masks, **kw))
    a, b, c = (np.asarray(r.image).astype(int) for r in (fused, alone, composed))
    assert np.abs(a - b).max() <= 2, "the pasted latent is not the object LoRA's own trajectory"
    assert np.abs(a - c).max() > 10, "the test cannot tell the own trajectory from the composition"


def test_the_last_paste_is_in_pixels(categorised):
    """With ``repaste``, the object's own image is pasted into the decoded composition: inside its
    region the pixels are the object LoRA's own trajectory, decoded alone. Pasted as latents, the
    decoder (whose mid-block attends over the whole latent) redrew them from both sides of the seam."""
    composer, paths = categorised
    h, w = _latent_hw(composer, 32)
    masks = torch.zeros(2, 1, h, w)
    masks[0, :, :, : w // 2] = 1.0  # cat on the left half, forest on the right
    masks[1, :, :, w // 2:] = 1.0
    kw = dict(steps=4, width=32, height=32, seed=11, cfg=3.0)
    g = GroundingParams(own_stride=1, fuse_at=2, plain_background=None)
    fused = composer.run(Job(PROMPT, loras=[paths["cat"], paths["forest"]], method="fusion", masks=masks,
                             grounding=g, **kw))
    alone = composer.run(Job(PROMPT, loras=[paths["cat"]], method="merge", **kw))
    composed = composer.run(Job(PROMPT, loras=[paths["cat"], paths["forest"]], method="grounded-loratorio",
                                masks=masks, **kw))
    a, b, c = (np.asarray(r.image).astype(int) for r in (fused, alone, composed))
    left = slice(0, 12)  # the left half, away from the bilinear seam at column 16
    # Measured on this pipeline: 0.1% of those pixels differ (by 1) pasted in pixels, 53% (by up to 3) as latents.
    assert (a[:, left] != b[:, left]).mean() < 0.01, "inside its region the image is not the object's own"
    assert np.abs(b[:, left] - c[:, left]).max() > 10, "the test cannot tell the own image from the composition"
    assert np.abs(a[:, 20:] - b[:, 20:]).max() > 10, "outside its region the object's image was pasted too"


@pytest.mark.parametrize("join_at, joins", [(None, 2), (3, 3), (4, None)])
def test_a_style_joins_the_own_trajectories_at_its_step(categorised, join_at, joins):
    """With a style LoRA, each object's own trajectory (and its base copy) runs without it until
    ``style_join_at`` (None: the fuse step), while the layout forms, and with it merged in from there
    (at or past the last step: never); the objects are repasted. Without ``style_joins``: no
    repaste, the composition finishes the objects."""
    composer, paths = categorised
    prompt = "a cat on the left, a forest, ink style"
    kw = dict(steps=4, width=32, height=32, seed=6,
              grounding=GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=2, style_joins=True,
                                        style_join_at=join_at))

    def own_predictions(names):
        seen = []
        job = Job(prompt, loras=[paths[n] for n in names], method="fusion", **kw)
        r = composer.run(job, callback=lambda info: seen.append(info["eps_c"][-2:].clone()))  # base copy, cat
        return r, seen

    styled, with_style = own_predictions(("cat", "forest", "ink"))
    plain, without = own_predictions(("cat", "forest"))  # the same prompt, no style LoRA
    assert styled.report["options"]["repaste"] and "Style joins: True" in styled.parameters
    for step in range(4):
        for k in range(2):  # the base copy's and the object's predictions
            differ = (with_style[step][k] - without[step][k]).abs().max()
            if joins is not None and step >= joins:  # the style is in both from its step on
                assert differ > 1e-3, (step, k)
            elif step < 2:  # the same until the fuse step (batches of other sizes)
                assert torch.allclose(with_style[step][k], without[step][k], atol=1e-5), (step, k)
            else:  # after the paste the own trajectories read the same latents: the same predictions
                assert differ < 1e-3, (step, k)
    g = GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=2, style_where="everywhere")  # no join, no repaste
    apart = composer.run(Job(prompt, loras=[paths[n] for n in ("cat", "forest", "ink")], method="fusion",
                             **(kw | {"grounding": g})))
    assert not apart.report["options"]["repaste"]
    assert apart.report["unet_samples"] == styled.report["unet_samples"] - 2 * 2 * 2  # no own trajectories after step 2


def test_a_style_measured_to_act_on_the_objects_leaves_them_to_the_composition(categorised):
    """``style_where="measured"``: a base copy with the style merged in runs beside the objects'
    until the fuse step; a style whose image departs from the base copy's over the objects (this
    random LoRA changes everything, as a real art style does) keeps them: no repaste, and the
    style's copy costs one conditional and one unconditional sample for each step until then."""
    composer, paths = categorised
    prompt = "a cat on the left, a forest, ink style"
    loras = [paths[n] for n in ("cat", "forest", "ink")]
    kw = dict(steps=4, width=32, height=32, seed=6)
    runs = {}
    for where in ("everywhere", "measured"):
        g = GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=2, style_where=where)
        runs[where] = composer.run(Job(prompt, loras=loras, method="fusion", grounding=g, **kw))
    measured, everywhere = runs["measured"].report, runs["everywhere"].report
    assert measured["options"]["style_where"] == "measured" and "Style where: measured" in runs["measured"].parameters
    assert measured["options"]["style_kept"] < 0.5 and not measured["options"]["repaste"]
    assert everywhere["options"]["style_kept"] is None and not everywhere["options"]["repaste"]
    assert measured["unet_samples"] == everywhere["unet_samples"] + 2 * 2
    with pytest.raises(ValueError, match="style_where"):
        composer.run(Job(prompt, loras=loras, method="fusion", grounding=GroundingParams(own_stride=1, style_where="nowhere"), **kw))


def test_a_style_measured_off_the_objects_never_enters_their_own_trajectories(categorised, monkeypatch):
    """Measured to act nowhere on the objects (here by hand: the random style LoRA acts everywhere),
    the style stays out of the objects' own trajectories to the end, and they are repasted: from
    the fuse step on, their predictions are those of the same job without the style LoRA."""
    from composer.methods.fusion import Fusion

    composer, paths = categorised
    measure = Fusion.measure_style

    def nowhere(self, denoiser):
        measure(self, denoiser)
        self.style_acts = torch.zeros_like(self.style_acts)

    monkeypatch.setattr(Fusion, "measure_style", nowhere)
    prompt = "a cat on the left, a forest, ink style"
    g = GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=2, style_where="measured")
    runs, seen = {}, {}
    for names in (("cat", "forest", "ink"), ("cat", "forest")):
        seen[names] = []
        runs[names] = composer.run(Job(prompt, loras=[paths[n] for n in names], method="fusion", grounding=g, steps=4,
                                       width=32, height=32, seed=6),
                                   callback=lambda info, k=names: seen[k].append(info["eps_c"][-2:].clone()))
    styled = runs[("cat", "forest", "ink")].report["options"]
    assert styled["repaste"] and styled["style_kept"] == 1.0
    for step in (2, 3):  # the base copy's and the cat's own predictions, after the style's copy stopped
        assert torch.allclose(seen[("cat", "forest", "ink")][step], seen[("cat", "forest")][step], atol=1e-5), step


def test_riders_can_leave_the_composition_to_their_object(categorised):
    """With ``riders_in_composition=False`` an attribute riding along with its object acts only in
    the object's own trajectory (the repaste carries its work): its weight in the composition is 0 at
    every step (but spatial_prior's floor), the background takes the band around the object, and
    its composition branch does not run."""
    composer, paths = categorised
    prompt = "a cat with a hat on the left, a forest"
    loras = [paths[n] for n in ("cat", "hat", "forest")]
    runs = {}
    for inside in (True, False):
        g = GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=2, riders_in_composition=inside)
        runs[inside] = composer.run(Job(prompt, loras=loras, method="fusion", steps=4, width=32, height=32, seed=8,
                                        grounding=g))
    hat = 1
    assert max(float(w[hat].max()) for w in runs[True].weights) > 0.01
    assert all(float(w[hat].max()) < 1e-3 for w in runs[False].weights)  # (spatial_prior's floor: 1e-4)
    assert runs[False].report["options"]["riders_in_composition"] is False
    # its composition branch, weighted by the floor alone, does not run: the base stands in for it
    # (its conditional half: with fusion_lam = 1 no LoRA's unconditional half runs in the composition)
    assert runs[False].report["unet_samples"] == runs[True].report["unet_samples"] - 1 * 4


def test_without_repaste_a_late_paste_brings_the_objects_back_for_the_composition_to_finish(categorised):
    """A style in the job stops the repaste; with ``late_paste`` the objects go on drawing alone to
    that step and are pasted again then, as latents, and the composition finishes them."""
    composer, paths = categorised
    prompt = "a cat on the left, a forest, ink style"
    loras = [paths[n] for n in ("cat", "forest", "ink")]
    runs = {}
    for late in (None, 3):
        g = GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=2, late_paste=late)
        runs[late] = composer.run(Job(prompt, loras=loras, method="fusion", steps=5, width=32, height=32, seed=9,
                                      grounding=g))
    assert not runs[3].report["options"]["repaste"] and runs[3].report["options"]["late_paste"] == 3
    # the own trajectories (base copy + cat, two samples each) run one step longer: steps 0-2, not 0-1
    assert runs[3].report["unet_samples"] == runs[None].report["unet_samples"] + 2 * 2 * 1
    assert np.abs(np.asarray(runs[3].image).astype(int) - np.asarray(runs[None].image).astype(int)).max() > 2
    g = GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=2, late_paste=9)  # past the last step: none
    assert composer.run(Job(prompt, loras=loras, method="fusion", steps=5, width=32, height=32, seed=9,
                            grounding=g)).report["options"]["late_paste"] is None


@pytest.mark.parametrize("repaste", [False, True])
def test_each_object_draws_alone_beside_a_base_copy_on_its_prompt(categorised, repaste):
    """One object: a base copy and the object. Two objects: each without the other's phrase, so each
    has a base copy of its own: (base + LoRA) x 2, two samples each per step, for the first
    ``fuse_at`` steps, or every step with ``repaste`` (not with an attribute LoRA, which must act on
    the objects, without ``ride_along``: the composition finishes them then)."""
    composer, paths = categorised
    g = GroundingParams(own_stride=1, fusion_lam=None, source="contrast", steps=(0, 1), fuse_at=2, repaste=repaste)
    steps = 4
    kw = dict(steps=steps, width=32, height=32, seed=2, grounding=g)
    for names, prompt, own, alone_steps in [
        (("cat", "forest"), "a cat on the left, a forest", 2, steps if repaste else 2),
        (("cat", "dog", "forest"), "a cat on the left and a dog on the right, a forest", 4, steps if repaste else 2),
        (("cat", "hat", "forest"), "a cat with a hat on the left, a forest", 2, steps if repaste else 2),
    ]:
        loras = [paths[n] for n in names]
        ours = composer.run(Job(prompt, loras=loras, method="fusion", **kw))
        theirs = composer.run(Job(prompt, loras=loras, method="grounded-loratorio", **kw))
        # (with repaste, a rider's composition branch does not run: it acts in its object's trajectory)
        riders = 2 * steps if repaste and "hat" in names else 0
        assert ours.report["unet_samples"] == theirs.report["unet_samples"] + 2 * own * alone_steps - riders, names
        assert ours.report["options"]["fuse_at"] == 2
        if "hat" in names:  # without riders, an attribute stops the repaste
            solo = composer.run(Job(prompt, loras=loras, method="fusion", **{
                **kw, "grounding": GroundingParams(own_stride=1, fusion_lam=None, source="contrast", steps=(0, 1), fuse_at=2, ride_along=False)}))
            assert solo.report["unet_samples"] == theirs.report["unet_samples"] + 2 * own * 2
        assert "Fuse at: 2" in ours.parameters
        assert not np.array_equal(np.asarray(ours.image), np.asarray(theirs.image))


def test_an_object_draws_alone_with_its_attribute_merged(categorised):
    """The cat and its hat own the whole image at the last step: the image is the cat and the hat
    merged (Merge of the two LoRAs) on the cat's own prompt: the riders draw in its own trajectory."""
    composer, paths = categorised
    h, w = _latent_hw(composer, 32)
    masks = torch.zeros(3, 1, h, w)
    masks[0] = 1.0
    prompt = "a cat with a hat on the left, a forest"
    kw = dict(steps=4, width=32, height=32, seed=12, cfg=3.0)
    fused = composer.run(Job(prompt, loras=[paths["cat"], paths["hat"], paths["forest"]], method="fusion",
                             masks=masks, grounding=GroundingParams(own_stride=1, fuse_at=2), **kw))
    own = "a cat with a hat on the left, light background"
    both = composer.run(Job(own, loras=[paths["cat"], paths["hat"]], method="merge", **kw))
    cat = composer.run(Job(own, loras=[paths["cat"]], method="merge", **kw))
    a, b, c = (np.asarray(r.image).astype(int) for r in (fused, both, cat))
    assert np.abs(a - b).max() <= 2, "the own trajectory is not the object and its attribute merged"
    assert np.abs(a - c).max() > 10, "the test cannot tell the attribute's work"
    assert fused.report["options"]["ride_along"] is True and "Ride along: True" in fused.parameters
    # The merged cat + hat runs in the step's one batched call (composer.stacked), not a call of its own.
    assert fused.report["unet_calls"] == 4


def test_riders_are_the_attributes_an_object_is_named_with():
    from types import SimpleNamespace as NS

    from composer.grounding.phrases import unit_of

    prompt = "a kiki with halo on the left and a bouba with halo on the right, stripes background, framed"
    loras = [NS(phrase=p, trigger_words=(t,)) for p, t in [("a kiki", "kiki"), ("a bouba", "bouba"),
                                                           ("halo", "halo"), ("stripes background", "stripes"),
                                                           ("framed", "framed")]]
    units = [unit_of(prompt, a.phrase, a.trigger_words) for a in loras]
    grounder = NS(roles=["object", "object", "attribute", "background", "style"], units=units,
                  owners=[None, None, 0, None, None])
    ctx = NS(loras=loras)
    assert riders(ctx, grounder, 0) == [2] and riders(ctx, grounder, 1) == [2]  # a style never rides
    grounder.units[1] = unit_of("a bouba on the right", "a bouba")  # a bouba named without the halo
    assert riders(ctx, grounder, 1) == []


def test_an_object_draws_alone_on_a_plain_background():
    """The background LoRA's unit reads as the plain phrase; the other object's unit goes; a unit
    that holds an object and a background alike stays."""
    from composer.grounding.phrases import unit_of

    prompt = "a kiki on the left and a bouba on the right, stripes background, framed"
    us = [unit_of(prompt, p) for p in ("a kiki", "a bouba", "stripes background", "framed")]
    assert object_prompts(prompt, us, [0, 1], [2], "light background") == [
        "a kiki on the left, light background, framed", "a bouba on the right, light background, framed"]
    assert object_prompts(prompt, us, [0, 1], [2], None) == [
        "a kiki on the left, stripes background, framed", "a bouba on the right, stripes background, framed"]
    one = "a kiki on a checkerboard"
    u = unit_of(one, "kiki")
    assert object_prompts(one, [u, u], [0], [1], "light background") == [one]


def test_after_replayed_steps_fusion_is_grounded_loratorio(categorised):
    """A probe's replayed first steps (composer.auto --reuse-probe) leave no noise for the objects to
    start from: the composition goes on as grounded LoRAtorio (with the job's lambda here,
    ``fusion_lam=None``; the default keeps fusion's 1)."""
    composer, paths = categorised
    h, w = _latent_hw(composer, 32)
    kw = dict(loras=[paths["cat"], paths["forest"]], steps=3, width=32, height=32, seed=4,
              grounding=GroundingParams(own_stride=1, fusion_lam=None, source="contrast", steps=(1, 2), fuse_at=2))
    replay = [torch.zeros(2, 4, h, w)]
    ours = composer.run(Job(PROMPT, method="fusion", **kw), replay=replay)
    theirs = composer.run(Job(PROMPT, method="grounded-loratorio", **kw), replay=replay)
    assert np.array_equal(np.asarray(ours.image), np.asarray(theirs.image))


def test_fusion_on_sdxl(sdxl_dir, tmp_path):
    """SDXL: the objects' own trajectories and their base copies carry the pooled embeddings and
    time ids of their own prompts (two text encoders)."""
    from composer_tiny import write_kohya_lora
    from diffusers import DiffusionPipeline
    from loras import civitai_sidecar

    from composer import Composer
    from loraregistry.api import Registry

    unet = DiffusionPipeline.from_pretrained(sdxl_dir).unet
    for i, (name, category) in enumerate([("lighthouse", "object"), ("boat", "vehicle"), ("sea", "background")]):
        write_kohya_lora(tmp_path / f"{name}.safetensors", unet, seed=30 + i, convs=False)
        civitai_sidecar(tmp_path / f"{name}.safetensors", model_id=500 + i, version_id=600 + i, name=f"{name} LoRA",
                        trained_words=[name], tags=[category], base_model="SDXL 1.0")
    registry = Registry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        registry.ingest(tmp_path)
        composer = Composer.from_pretrained(sdxl_dir, registry=lambda: registry, device="cpu", cache_bytes=None)
        g = GroundingParams(own_stride=1, fusion_lam=None, source="contrast", steps=(0,), fuse_at=2)
        prompt = "a lighthouse on the left and a boat on the right, the sea"
        loras = [str(tmp_path / f"{n}.safetensors") for n in ("lighthouse", "boat", "sea")]
        kw = dict(loras=loras, steps=3, width=32, height=32, seed=4, grounding=g)
        ours = composer.run(Job(prompt, method="fusion", **kw))
        theirs = composer.run(Job(prompt, method="grounded-loratorio", **kw))
        # the default stride on an Euler scheduler: the own trajectories on steps 0 and 2 of 3
        strided = composer.run(Job(prompt, method="fusion", **{**kw, "grounding": dataclasses.replace(g, own_stride=2)}))
    finally:
        registry.close()
    assert ours.report["unet_samples"] == theirs.report["unet_samples"] + 2 * 4 * kw["steps"]  # repaste: every step
    assert strided.report["unet_samples"] == theirs.report["unet_samples"] + 2 * 4 * 2
    assert np.asarray(strided.image).std() > 1
    assert np.asarray(ours.image).std() > 1 and ours.weights[-1].shape == (3, 16, 16)
    assert not np.array_equal(np.asarray(ours.image), np.asarray(theirs.image))


def test_the_base_stands_in_for_the_composition_branches_that_do_not_run():
    """``objects_in_composition=False``: the composition's combine gets the base's prediction where an
    object's branch did not run, and the own trajectories' rows after the composition's."""
    from composer.methods.fusion import Fusion, OwnTrajectories
    from composer.methods.loratorio import loratorio_combine
    from composer.regional import RegionState

    f = Fusion()
    f.n, f.comp_active, f.own = 3, [0, 2], OwnTrajectories(0)  # base, an object (stood in for), a background
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, :, :, :2] = 1.0
    masks[1, :, :, 2:] = 1.0
    f.state = RegionState(("cat", "forest"), masks=masks)
    torch.manual_seed(0)
    eps_c, eps_u = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    eps_c[1] = eps_c[0] + 0.3 * eps_c[1]  # a LoRA's prediction is near the base's
    ours = f.combine(eps_u, eps_c, 0)
    rows = [0, 0, 1]
    theirs = loratorio_combine(f.params, eps_u[rows], eps_c[rows], prior=masks)
    assert torch.equal(ours.cond, theirs.cond) and torch.equal(ours.uncond, theirs.uncond)
    # the object's half: the base's prediction; the background's: the forest branch's
    assert torch.allclose(ours.cond[..., :2], eps_c[0][..., :2], atol=1e-3)
    assert torch.allclose(ours.cond[..., 2:], eps_c[1][..., 2:], atol=1e-3)
    assert not torch.allclose(ours.cond[..., 2:], eps_c[0][..., 2:], atol=1e-1)


def test_with_repaste_the_objects_can_leave_the_composition(categorised):
    """``objects_in_composition=False`` with ``repaste``: after the fuse step the object's composition
    branch does not run, two samples a step; the object's region is its own image, as before."""
    composer, paths = categorised
    h, w = _latent_hw(composer, 32)
    masks = torch.zeros(3, 1, h, w)
    masks[0, :, :, : w // 2] = 1.0  # cat (and its hat) on the left half, forest on the right
    masks[1] = masks[0]
    masks[2, :, :, w // 2:] = 1.0
    prompt = "a cat with a hat on the left, a forest"
    loras = [paths[n] for n in ("cat", "hat", "forest")]
    runs = {}
    for inside in (True, False):
        g = GroundingParams(own_stride=1, fusion_lam=None, fuse_at=2, objects_in_composition=inside)
        runs[inside] = composer.run(Job(prompt, loras=loras, method="fusion", masks=masks, steps=4, width=32,
                                        height=32, seed=8, cfg=3.0, grounding=g))
    # (the hat's composition branch runs in neither: it rides along, only in the cat's trajectory)
    assert runs[False].report["unet_samples"] == runs[True].report["unet_samples"] - 2 * (4 - 2)
    a, b = (np.asarray(r.image).astype(int) for r in (runs[False], runs[True]))
    left = slice(0, 12)  # away from the seam
    assert (a[:, left] != b[:, left]).mean() < 0.01, "inside its region the image is not the object's own"
    g = GroundingParams(own_stride=1, fusion_lam=None, fuse_at=2, objects_in_composition=False, repaste=False)  # the composition finishes them
    kept = composer.run(Job(prompt, loras=loras, method="fusion", masks=masks, steps=4, width=32, height=32, seed=8,
                            grounding=g))
    inside = composer.run(Job(prompt, loras=loras, method="fusion", masks=masks, steps=4, width=32, height=32, seed=8,
                              grounding=GroundingParams(own_stride=1, fusion_lam=None, fuse_at=2, repaste=False)))
    assert kept.report["unet_samples"] == inside.report["unet_samples"]


def test_the_last_paste_can_take_the_fuse_steps_regions(categorised):
    """``final_regions="fuse"``: the base copy stops at the fuse step (two samples a step fewer after
    it) and the object is pasted again after the last step where it was pasted at the fuse step."""
    from composer.methods.fusion import Fusion

    composer, paths = categorised
    seen = {}
    paste_regions = Fusion.outside_style

    def record(self, regions, fusing, denoiser):
        out = paste_regions(self, regions, fusing, denoiser)
        seen.setdefault(self.grounding.final_regions, []).append(out[0].clone())
        return out

    steps, fuse_at = 5, 2
    runs = {}
    for final in ("last", "fuse"):
        g = GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=fuse_at, final_regions=final)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Fusion, "outside_style", record)
            runs[final] = composer.run(Job(PROMPT, loras=[paths["cat"], paths["forest"]], method="fusion", steps=steps,
                                           width=32, height=32, seed=4, grounding=g))
    assert runs["fuse"].report["unet_samples"] == runs["last"].report["unet_samples"] - 2 * (steps - fuse_at)
    assert len(seen["last"]) == 2 and len(seen["fuse"]) == 1  # measured at the fuse step and the last / once
    assert torch.equal(seen["fuse"][0], seen["last"][0])
    with pytest.raises(ValueError, match="final_regions"):
        composer.run(Job(PROMPT, loras=[paths["cat"], paths["forest"]], method="fusion", steps=3, width=32, height=32,
                         grounding=GroundingParams(own_stride=1, final_regions="first")))


def test_an_object_with_a_rider_is_repasted_over_its_region_grown_by_the_band(categorised):
    """``rider_band``: an attribute drawn around its object (a halo's band) lies at the region's soft
    edge; the last paste grows the region of an object with a rider by the band, so that just past
    the edge the pixels are the object's own image; an object without a rider keeps its region."""
    composer, paths = categorised
    h, w = _latent_hw(composer, 32)
    f = 32 // w  # image pixels per latent pixel
    masks = torch.zeros(3, 1, h, w)
    masks[0, :, :, : w // 2] = 1.0  # the cat (and its hat) on the left half, the forest on the right
    masks[1] = masks[0]
    masks[2, :, :, w // 2:] = 1.0
    kw = dict(steps=4, width=32, height=32, seed=12, cfg=3.0)
    runs = {}
    for band in (0.0, 1.0):
        for names in (("cat", "hat", "forest"), ("cat", "forest")):
            prompt = "a cat with a hat on the left, a forest" if "hat" in names else "a cat on the left, a forest"
            m = masks if "hat" in names else masks[[0, 2]]
            runs[band, names] = composer.run(Job(prompt, loras=[paths[n] for n in names], method="fusion", masks=m,
                                                 grounding=GroundingParams(own_stride=1, fuse_at=2, rider_band=band), **kw))
    own = composer.run(Job("a cat with a hat on the left, light background", loras=[paths["cat"], paths["hat"]],
                           method="merge", **kw))
    o = np.asarray(own.image).astype(int)
    grown, plain = (np.asarray(runs[b, ("cat", "hat", "forest")].image).astype(int) for b in (1.0, 0.0))
    past = slice(16, 16 + f // 2)  # past the edge of the region (column 16), where its bilinear edge fades
    assert np.abs(grown[:, past] - o[:, past]).max() <= 2, "past the edge, the grown region is not the own image"
    assert np.abs(plain[:, past] - o[:, past]).max() > 10, "the test cannot tell the grown region"
    beyond = slice(16 + 3 * f // 2, 32)  # past the faded edge and the band: the composition, unchanged
    assert np.array_equal(grown[:, beyond], plain[:, beyond])
    no_rider = [np.asarray(runs[b, ("cat", "forest")].image) for b in (1.0, 0.0)]
    assert np.array_equal(*no_rider), "an object without a rider was grown"


@pytest.mark.parametrize("method", ["loratorio", "fusion"])
def test_with_lambda_one_only_the_bases_unconditional_is_computed(categorised, monkeypatch, method):
    """LoRAtorio's re-centred guidance with lambda = 1 is the base's unconditional prediction alone:
    the LoRAs' are not computed (fusion: the composition's; its own trajectories keep theirs), and
    the image is the one computing them all gives."""
    from composer.methods.fusion import Fusion
    from composer.methods.loratorio import Loratorio
    from composer.params import LoratorioParams

    composer, paths = categorised
    kw = dict(loras=[paths["cat"], paths["forest"]], method=method, steps=4, width=32, height=32, seed=5,
              params=LoratorioParams(lam=1.0), grounding=GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=2))
    lean = composer.run(Job(PROMPT, **kw))
    monkeypatch.setattr(Loratorio, "uncond_branches", property(lambda self: None))
    monkeypatch.setattr(Fusion, "uncond_branches", property(lambda self: None))
    every = composer.run(Job(PROMPT, **kw))
    assert lean.report["unet_samples"] == every.report["unet_samples"] - 2 * 4  # the 2 LoRAs' unconditionals, 4 steps
    assert np.abs(np.asarray(lean.image).astype(int) - np.asarray(every.image).astype(int)).max() <= 1


def test_fusions_composition_takes_its_own_lambda(categorised):
    """``fusion_lam`` (default 1) is LoRAtorio's lambda in fusion's composition, whatever the job's;
    ``loratorio`` keeps the job's (0.5 by default: the paper's method stays as it was)."""
    from composer.params import LoratorioParams

    composer, paths = categorised
    kw = dict(loras=[paths["cat"], paths["forest"]], steps=4, width=32, height=32, seed=5,
              grounding=GroundingParams(own_stride=1, source="contrast", steps=(0, 1), fuse_at=2))
    default = composer.run(Job(PROMPT, method="fusion", **kw))
    one = composer.run(Job(PROMPT, method="fusion", params=LoratorioParams(lam=1.0), **kw))
    assert default.report["options"]["loratorio"]["lam"] == 1.0
    assert np.array_equal(np.asarray(default.image), np.asarray(one.image))
    assert default.report["unet_samples"] == one.report["unet_samples"]
    half = composer.run(Job(PROMPT, method="fusion", **{**kw, "grounding": GroundingParams(own_stride=1,
        source="contrast", steps=(0, 1), fuse_at=2, fusion_lam=None)}))
    assert half.report["options"]["loratorio"]["lam"] == 0.5 and half.report["unet_samples"] > one.report["unet_samples"]
    assert composer.run(Job(PROMPT, method="loratorio", **kw)).report["options"]["loratorio"]["lam"] == 0.5


def test_a_repeated_prediction_is_one_ddim_step_of_twice_the_stride():
    """``own_stride``: on a step between UNet calls an own trajectory steps again on its last
    prediction; with DDIM that is exactly the DDIM step from the first timestep to the one after next."""
    from diffusers import DDIMScheduler

    from composer.methods.fusion import OwnTrajectories

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, set_alpha_to_one=True, steps_offset=1, clip_sample=False)
    sched.set_timesteps(4)
    t0, _, t2, _ = sched.timesteps
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(1, 4, 3, 3, generator=g), torch.randn(1, 4, 3, 3, generator=g)
    own = OwnTrajectories(1)
    own.start(x, sched)
    own.inputs(t0)
    own.advance(None, eps[None], cfg=2.0)  # no unconditional half: the prediction is eps itself
    own.repeat(sched.timesteps[1])
    a0, a2 = sched.alphas_cumprod[t0], sched.alphas_cumprod[t2]
    x0 = (x - (1 - a0).sqrt() * eps) / a0.sqrt()
    assert torch.allclose(own.latents[0], a2.sqrt() * x0 + (1 - a2).sqrt() * eps, atol=1e-5)
    assert torch.allclose(own.images()[0], x0, atol=1e-5)


def test_own_stride_saves_the_own_trajectories_samples_between_calls(categorised):
    """With ``own_stride = 2`` the objects and their base copies call the UNet on steps 0 and 2 of 4
    only; the composition's samples are the same; a stride under 1 is refused."""
    composer, paths = categorised
    loras = [paths["cat"], paths["forest"]]
    kw = dict(loras=loras, steps=4, width=32, height=32, seed=2, method="fusion")
    g = dict(fusion_lam=None, source="contrast", steps=(0, 1), fuse_at=2)
    every = composer.run(Job(PROMPT, grounding=GroundingParams(own_stride=1, **g), **kw))
    strided = composer.run(Job(PROMPT, grounding=GroundingParams(own_stride=2, **g), **kw))
    # one object: its own trajectory and its base copy, two samples each, skipped on steps 1 and 3
    assert strided.report["unet_samples"] == every.report["unet_samples"] - 2 * 2 * 2
    assert not np.array_equal(np.asarray(strided.image), np.asarray(every.image))
    with pytest.raises(ValueError, match="own_stride"):
        composer.run(Job(PROMPT, grounding=GroundingParams(own_stride=0, **g), **kw))


def test_a_style_yields_to_the_background_where_it_was_not_measured_to_act():
    """Columns: 0 an object's (no background there), 1-2 the background's, 3 the border, where the
    style was measured to act. Inside the background the style keeps only the border; on the object
    it keeps its mask; without a background LoRA nothing changes."""
    from composer.methods.fusion import style_yields

    roles = ["object", "background", "style"]
    masks = torch.zeros(3, 1, 1, 4)
    masks[0, ..., 0] = 1.0
    masks[1, ..., 1:] = 1.0
    masks[2] = 1.0
    acts = torch.tensor([[[0.0, 0.0, 0.25, 1.0]]])
    out = style_yields(masks, roles, acts)
    assert out[2].flatten().tolist() == [1.0, 0.0, 0.25, 1.0]
    assert torch.equal(out[:2], masks[:2])
    assert torch.equal(style_yields(masks[[0, 2]], ["object", "style"], acts), masks[[0, 2]])


def test_the_style_mask_measured_reaches_the_composition_after_the_fuse_step(categorised, monkeypatch):
    """``style_mask="measured"`` (the default): at the fuse step the style's composition mask is cut
    to where it was measured to act inside the background (here nowhere, by hand), which changes
    the image; "everywhere" leaves it whole."""
    import composer.methods.fusion as fusion

    composer, paths = categorised
    measure, real = fusion.Fusion.measure_style, fusion.style_yields

    def nowhere(self, denoiser):
        measure(self, denoiser)
        self.style_acts = torch.zeros_like(self.style_acts)

    calls = []
    monkeypatch.setattr(fusion.Fusion, "measure_style", nowhere)
    monkeypatch.setattr(fusion, "style_yields", lambda *a: calls.append(real(*a)) or calls[-1])
    prompt = "a cat on the left, a forest, ink style"
    loras = [paths[n] for n in ("cat", "forest", "ink")]
    images = {}
    for mode in ("everywhere", "measured"):
        g = GroundingParams(source="contrast", steps=(0, 1), fuse_at=2, style_mask=mode)
        images[mode] = np.asarray(composer.run(Job(prompt, loras=loras, method="fusion", grounding=g, steps=4,
                                                   width=32, height=32, seed=6)).image)
        assert len(calls) == (mode == "measured")
    fused = calls[0]  # (object, background, style) routed masks
    assert torch.equal(fused[2], 1 - fused[1])  # the style keeps only what the background does not hold
    assert not np.array_equal(images["everywhere"], images["measured"])
