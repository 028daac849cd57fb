"""by-role: the method chosen from the LoRAs' Civitai categories, run exactly as that method runs."""
from __future__ import annotations

import numpy as np
import pytest

from composer import Job
from composer.methods.by_role import method_for_roles
from composer.params import GroundingParams


def test_method_for_roles():
    assert method_for_roles(["object", "object"]) == "fusion"
    assert method_for_roles(["object", "background", "object", "attribute"]) == "fusion"
    assert method_for_roles(["object", "attribute"]) == "fusion"  # the attribute rides along
    assert method_for_roles(["attribute", "background", "object"]) == "fusion"
    assert method_for_roles(["object", "background"]) == "fusion"
    assert method_for_roles(["style", "object"]) == "fusion"
    assert method_for_roles(["attribute", "background"]) == "loratorio"  # an attribute of no object
    assert method_for_roles(["style", "concept"]) == "loratorio"
    assert method_for_roles(["object"]) == "loratorio"


@pytest.mark.parametrize("names, chosen", [(("cat", "dog"), "fusion"), (("cat", "hat"), "fusion"),
                                           (("hat", "forest"), "loratorio")])
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
