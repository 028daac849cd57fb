"""fusion-regional: fusion's own trajectories for the objects, then the single-pass regional
composition (composer.methods.fusion_regional)."""
from __future__ import annotations

import numpy as np
import torch

from composer import Job
from composer.methods.fusion_regional import _rows
from composer.params import GroundingParams

PROMPT = "a cat on the left, a forest"


def _latent_hw(composer, size: int) -> tuple[int, int]:
    f = composer.pipe.vae_scale_factor
    return size // f, size // f


def _image(result) -> np.ndarray:
    return np.asarray(result.image).astype(int)


def test_rows_lay_out_branches_as_the_unet_batch():
    u0, c0, u1, c1 = (torch.full((2, 3), float(v)) for v in (1, 2, 3, 4))
    assert _rows([(u0, c0), (u1, c1)], cfg=True)[:, 0].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    assert _rows([(u0, c0), (u1, c1)], cfg=False)[:, 0].tolist() == [2, 2, 4, 4]


def test_without_an_object_it_is_the_regional_method(categorised):
    composer, paths = categorised
    kw = dict(loras=[paths["hat"], paths["forest"]], steps=3, width=32, height=32, seed=3,
              grounding=GroundingParams(source="contrast", steps=(0, 1), fuse_at=2))
    ours = composer.run(Job(PROMPT, method="fusion-regional", **kw))
    theirs = composer.run(Job(PROMPT, method="regional", **kw))
    assert np.array_equal(_image(ours), _image(theirs))
    assert ours.report["unet_samples"] == theirs.report["unet_samples"]


def test_an_object_that_owns_the_whole_image_is_that_lora_alone_with_its_attribute(categorised):
    """Fused after the last step with the cat's mask all ones, the image is the cat's own trajectory:
    the cat LoRA and the hat that qualifies it, merged, alone on the prompt (the forest nowhere)."""
    composer, paths = categorised
    h, w = _latent_hw(composer, 32)
    masks = torch.zeros(3, 1, h, w)
    masks[0] = 1.0
    prompt = "a cat with a hat on the left, a forest"
    kw = dict(steps=4, width=32, height=32, seed=11, cfg=3.0)
    fused = composer.run(Job(prompt, loras=[paths["cat"], paths["hat"], paths["forest"]], method="fusion-regional",
                             masks=masks, grounding=GroundingParams(fuse_at=4), **kw))
    alone = composer.run(Job(prompt, loras=[paths["cat"], paths["hat"]], method="merge", **kw))
    cat_only = composer.run(Job(prompt, loras=[paths["cat"]], method="merge", **kw))
    assert np.abs(_image(fused) - _image(alone)).max() <= 2, "the pasted latent is not the cat and hat merged"
    assert np.abs(_image(fused) - _image(cat_only)).max() > 10, "the test cannot tell whether the hat acted"


def test_after_the_paste_the_composition_is_one_call_per_guidance_half(categorised):
    """One object: a base copy and the object beside the composition for fuse_at steps (two samples
    each per step), then Merge's two samples per step; no mask source calls."""
    composer, paths = categorised
    g = GroundingParams(source="contrast", steps=(0, 1), fuse_at=2)
    kw = dict(loras=[paths["cat"], paths["forest"]], steps=5, width=32, height=32, seed=2, grounding=g)
    ours = composer.run(Job(PROMPT, method="fusion-regional", **kw))
    merge = composer.run(Job(PROMPT, method="merge", **kw))
    assert ours.report["unet_samples"] == merge.report["unet_samples"] + 2 * 2 * g.fuse_at
    assert ours.report["options"]["fuse_at"] == 2 and "Fuse at: 2" in ours.parameters
    assert len(ours.weights) == 5 and ours.weights[-1].shape == (2, *_latent_hw(composer, 32))
    cat, forest = ours.weights[-1]
    assert torch.allclose(cat + forest, torch.ones_like(cat), atol=1e-5), "the forest takes what the cat does not"
    assert ours.weights[0][0].max() == 0 and ours.weights[0][1].min() == 1, "before the paste: no object claimed"


def test_two_objects_measure_whose_place_is_whose_on_the_source_steps(categorised):
    composer, paths = categorised
    g = GroundingParams(source="contrast", steps=(0, 1), fuse_at=2)
    prompt = "a cat on the left and a dog on the right, a forest"
    kw = dict(loras=[paths["cat"], paths["dog"], paths["forest"]], steps=4, width=32, height=32, seed=5, grounding=g)
    ours = composer.run(Job(prompt, method="fusion-regional", **kw))
    merge = composer.run(Job(prompt, method="merge", **kw))
    # Own trajectories: a base copy and the object per object prompt (4); the contrast source: the
    # base and one per local LoRA (1 + 3) conditional samples on each of its two steps.
    assert ours.report["unet_samples"] == merge.report["unet_samples"] + 2 * 4 * g.fuse_at + 2 * 4
    assert not np.array_equal(_image(ours), _image(merge))


def test_after_replayed_steps_it_is_the_regional_method(categorised):
    composer, paths = categorised
    h, w = _latent_hw(composer, 32)
    kw = dict(loras=[paths["cat"], paths["forest"]], steps=3, width=32, height=32, seed=4,
              grounding=GroundingParams(source="contrast", steps=(1, 2), fuse_at=2))
    replay = [torch.zeros(2, 4, h, w)]
    ours = composer.run(Job(PROMPT, method="fusion-regional", **kw), replay=replay)
    theirs = composer.run(Job(PROMPT, method="regional", **kw), replay=replay)
    assert np.array_equal(_image(ours), _image(theirs))


def test_fusion_regional_on_sdxl(sdxl_dir, tmp_path):
    """SDXL: the own rows carry the pooled embeddings and time ids of their own prompts."""
    from composer_tiny import write_kohya_lora
    from diffusers import DiffusionPipeline
    from loras import civitai_sidecar

    from composer import Composer
    from loraregistry.api import Registry

    unet = DiffusionPipeline.from_pretrained(sdxl_dir).unet
    for i, (name, category) in enumerate([("lighthouse", "object"), ("sea", "background")]):
        write_kohya_lora(tmp_path / f"{name}.safetensors", unet, seed=40 + i, convs=False)
        civitai_sidecar(tmp_path / f"{name}.safetensors", model_id=700 + i, version_id=800 + i, name=f"{name} LoRA",
                        trained_words=[name], tags=[category], base_model="SDXL 1.0")
    registry = Registry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        registry.ingest(tmp_path)
        composer = Composer.from_pretrained(sdxl_dir, registry=lambda: registry, device="cpu", cache_bytes=None)
        g = GroundingParams(fuse_at=2)
        loras = [str(tmp_path / f"{n}.safetensors") for n in ("lighthouse", "sea")]
        kw = dict(loras=loras, steps=3, width=32, height=32, seed=4, grounding=g)
        prompt = "a lighthouse on the left, the sea"
        ours = composer.run(Job(prompt, method="fusion-regional", **kw))
        merge = composer.run(Job(prompt, method="merge", **kw))
    finally:
        registry.close()
    assert ours.report["unet_samples"] == merge.report["unet_samples"] + 2 * 2 * g.fuse_at
    assert np.asarray(ours.image).std() > 1 and ours.weights[-1].shape == (2, 16, 16)
    assert not np.array_equal(_image(ours), _image(merge))
