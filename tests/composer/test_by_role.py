"""by-role: the method chosen from the LoRAs' Civitai categories, run exactly as that method runs."""
from __future__ import annotations

import numpy as np
import pytest
from diffusers import DiffusionPipeline

from composer import Composer, Job
from composer.methods.by_role import method_for_roles
from composer.params import GroundingParams


def test_method_for_roles():
    assert method_for_roles(["object", "object"]) == "grounded-loratorio"
    assert method_for_roles(["object", "background", "object", "attribute"]) == "grounded-loratorio"
    assert method_for_roles(["object", "attribute"]) == "merge"
    assert method_for_roles(["attribute", "background", "object"]) == "merge"
    assert method_for_roles(["object", "background"]) == "loratorio"
    assert method_for_roles(["attribute", "background"]) == "loratorio"  # an attribute of no object
    assert method_for_roles(["style", "concept"]) == "loratorio"
    assert method_for_roles(["object"]) == "loratorio"


@pytest.fixture(scope="module")
def categorised(sd1_dir, tmp_path_factory):
    """Kohya LoRAs for the tiny SD1 with Civitai sidecars whose first tag is a category, ingested."""
    from composer_tiny import write_kohya_lora
    from loras import civitai_sidecar

    from loraregistry.api import Registry

    pipe = DiffusionPipeline.from_pretrained(sd1_dir)
    d = tmp_path_factory.mktemp("categorised")
    paths = {}
    for i, (name, category) in enumerate([("cat", "character"), ("dog", "character"), ("hat", "clothing"),
                                          ("forest", "background")]):
        path = write_kohya_lora(d / f"{name}.safetensors", pipe.unet, None, seed=20 + i, convs=False)
        civitai_sidecar(d / f"{name}.safetensors", model_id=300 + i, version_id=400 + i, name=f"{name} LoRA",
                        trained_words=[name], tags=[category, "toy"])
        paths[name] = path
    registry = Registry.open(f"sqlite:///{d / 'registry.db'}")
    registry.ingest(d)
    composer = Composer.from_pretrained(sd1_dir, registry=lambda: registry, device="cpu", cache_bytes=None)
    yield composer, paths
    registry.close()


@pytest.mark.parametrize("names, chosen", [(("cat", "dog"), "grounded-loratorio"), (("cat", "hat"), "merge"),
                                           (("cat", "forest"), "loratorio")])
def test_by_role_runs_the_chosen_method_unchanged(categorised, names, chosen):
    composer, paths = categorised
    kw = dict(loras=[paths[n] for n in names], steps=3, width=32, height=32, seed=5,
              grounding=GroundingParams(source="contrast", steps=(0, 1)))
    prompt = "a cat on the left, a dog on the right, a hat, a forest"
    ours = composer.run(Job(prompt, method="by-role", **kw))
    theirs = composer.run(Job(prompt, method=chosen, **kw))
    assert ours.report["options"]["chosen"] == chosen
    assert f"Chosen method: {chosen}" in ours.parameters
    assert np.array_equal(np.asarray(ours.image), np.asarray(theirs.image))
    assert ours.report["unet_samples"] == theirs.report["unet_samples"]
    assert len(ours.weights) == len(theirs.weights) == 3
