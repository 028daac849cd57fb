"""Caption grammar, caption noise and composition tasks (SPEC.md)."""

import numpy as np

from toyworld import spec
from toyworld.captions import (
    add_noise,
    caption,
    sample_base_scene,
    sample_skill_scene,
    sample_tasks,
    task_skill_sets,
    vocabulary,
)
from toyworld.scene import Scene, SceneObject


def test_spec_examples():
    red_left = SceneObject("circle", "left", "red")
    assert caption(Scene((red_left,), "light")) == "a red circle on the left, light background"
    assert caption(Scene((SceneObject("square", "center", "blue"),), "dark")) == (
        "a blue square in the center, dark background"
    )
    assert caption(Scene((red_left, SceneObject("square", "right", "blue")), "dark")) == (
        "a red circle on the left and a blue square on the right, dark background"
    )
    assert caption(Scene((), "light")) == "an empty light background"
    assert caption(Scene((SceneObject("kiki", "left"),), "light")) == "a kiki on the left, light background"
    assert caption(Scene((red_left,), "checkerboard")) == "a red circle on the left, checkerboard background"
    assert caption(Scene((SceneObject("kiki", "left"), SceneObject("bouba", "right")), "stripes")) == (
        "a kiki on the left and a bouba on the right, stripes background"
    )
    assert caption(Scene((red_left,), "dark", halo=True)) == "a red circle with halo on the left, dark background"
    assert caption(Scene((SceneObject("square", "right", "blue"),), "light", framed=True)) == (
        "a blue square on the right, light background, framed"
    )


def test_base_captions_never_hold_a_trigger():
    rng = np.random.default_rng(0)
    for _ in range(500):
        scene = sample_base_scene(rng)
        assert not scene.skills
        assert not set(caption(scene).replace(",", " ").split()) & set(spec.TRIGGERS)


def test_skill_scenes_show_exactly_their_skill():
    rng = np.random.default_rng(0)
    for skill in spec.TRIGGERS:
        for _ in range(100):
            assert sample_skill_scene(skill, rng).skills == {skill}


def test_noise_rate_and_vocabulary():
    assert len(spec.MEANINGLESS_WORDS) >= 50 and set(spec.TRIGGERS) <= set(spec.NOISE_VOCAB)
    assert len(set(spec.NOISE_VOCAB)) == len(spec.NOISE_VOCAB)
    rng = np.random.default_rng(0)
    base = "a red circle on the left, light background"
    n_words = len(base.split())
    added = [len(add_noise(base, rng).split()) - n_words for _ in range(4000)]
    assert abs(np.mean([a > 0 for a in added]) - 0.5) < 0.03
    assert set(added) == {0, 1, 2, 3}


def test_noise_words_are_in_the_vocabulary():
    vocab = set(vocabulary())
    assert set(spec.NOISE_VOCAB) <= vocab
    rng = np.random.default_rng(1)
    for _ in range(300):
        text = add_noise(caption(sample_skill_scene(spec.TRIGGERS[int(rng.integers(8))], rng)), rng)
        assert set(text.replace(",", " , ").split()) <= vocab


def test_task_skill_sets():
    cats = {s: spec.SKILLS[s].category for s in spec.TRIGGERS}
    for n in (2, 3, 4):
        sets = task_skill_sets(n)
        assert sets and all(len(s) == n for s in sets)
        for s in sets:
            c = [cats[k] for k in s]
            assert c.count("character") <= 2
            assert len([x for x in c if x != "character"]) == len({x for x in c if x != "character"})
    # e.g. kiki + bouba + checkerboard + framed, SPEC's N = 4 example
    assert ("kiki", "bouba", "checkerboard", "framed") in task_skill_sets(4)


def test_task_prompts():
    rng = np.random.default_rng(0)
    for task in sample_tasks(4, 50, rng) + sample_tasks(2, 50, rng):
        assert task.scene.skills == set(task.skills)
        for skill in task.skills:
            assert skill in task.prompt
