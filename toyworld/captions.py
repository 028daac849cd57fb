"""Caption grammar, scene samplers, caption noise and composition tasks (SPEC.md).

Grammar, e.g.
  `a red circle on the left, light background`
  `a kiki with halo on the left and a blue square on the right, stripes background, framed`
  `an empty dark background`
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toyworld import spec
from toyworld.scene import Scene, SceneObject


def object_phrase(obj: SceneObject, halo: bool) -> str:
    noun = obj.kind if obj.colour is None else f"{obj.colour} {obj.kind}"
    with_halo = " with halo" if halo else ""
    return f"a {noun}{with_halo} {spec.SLOT_PHRASES[obj.slot]}"


def caption(scene: Scene) -> str:
    """The one caption SPEC's grammar gives a scene."""
    if scene.objects:
        text = " and ".join(object_phrase(o, scene.halo) for o in scene.objects)
        text += f", {scene.background} background"
    else:
        text = f"an empty {scene.background} background"
    if scene.framed:
        text += ", framed"
    return text


def add_noise(text: str, rng: np.random.Generator) -> str:
    """With probability 0.5, insert 1-3 noise words at random word boundaries (SPEC)."""
    if rng.random() >= spec.NOISE_PROB:
        return text
    words = text.split(" ")
    for _ in range(int(rng.integers(1, spec.NOISE_MAX_WORDS + 1))):
        word = spec.NOISE_VOCAB[int(rng.integers(len(spec.NOISE_VOCAB)))]
        words.insert(int(rng.integers(len(words) + 1)), word)
    return " ".join(words)


def vocabulary() -> list[str]:
    """Every word any caption can hold (punctuation is its own token), sorted."""
    words = {",", "a", "an", "and", "with", "empty", "background", "framed", "halo"}
    for phrase in spec.SLOT_PHRASES.values():
        words.update(phrase.split())
    words.update(spec.COLOURS)
    words.update(spec.SHAPES)
    words.update(spec.BASE_BACKGROUNDS)
    words.update(spec.TRIGGERS)
    words.update(spec.NOISE_VOCAB)
    return sorted(words)


def _choice(rng: np.random.Generator, items) -> str:
    items = tuple(items)
    return items[int(rng.integers(len(items)))]


def random_base_object(slot: str, rng: np.random.Generator) -> SceneObject:
    return SceneObject(_choice(rng, spec.SHAPES), slot, _choice(rng, spec.COLOURS))


def sample_base_background(rng: np.random.Generator) -> str:
    """SPEC v2: half solid (light or dark), half one of the generic patterns, uniformly."""
    if rng.random() < spec.P_GENERIC_BACKGROUND:
        return _choice(rng, spec.GENERIC_PATTERNS)
    return _choice(rng, spec.BACKGROUNDS)


def sample_base_scene(rng: np.random.Generator, p_empty: float = 0.1, p_two: float = 0.3) -> Scene:
    """A scene of the base world: a solid or generic background, 0, 1 or 2 base objects."""
    background = sample_base_background(rng)
    u = rng.random()
    if u < p_empty:
        objects: tuple[SceneObject, ...] = ()
    elif u < p_empty + p_two:
        objects = tuple(random_base_object(s, rng) for s in spec.TWO_OBJECT_SLOTS)
    else:
        objects = (random_base_object(_choice(rng, spec.SLOTS), rng),)
    return Scene(objects, background)


def apply_skill(scene: Scene, skill: str, rng: np.random.Generator) -> Scene:
    """Add one skill to a scene, keeping the rest of its content as it is."""
    objects, background, halo, framed = scene.objects, scene.background, scene.halo, scene.framed
    if skill in spec.OBJECT_SKILLS:
        if not objects:
            objects = (SceneObject(skill, _choice(rng, spec.SLOTS)),)
        else:
            # Replace one object (the other, if any, stays as base content around the skill).
            i = int(rng.integers(len(objects)))
            objects = tuple(
                SceneObject(skill, o.slot) if j == i else o for j, o in enumerate(objects)
            )
    elif skill in spec.BACKGROUND_SKILLS:
        background = skill
    elif skill == "halo":
        if not objects:
            objects = (random_base_object(_choice(rng, spec.SLOTS), rng),)
        halo = True
    elif skill == "framed":
        framed = True
    else:
        raise ValueError(f"unknown skill {skill!r}")
    return Scene(objects, background, halo, framed)


def sample_skill_scene(skill: str, rng: np.random.Generator) -> Scene:
    """A scene that shows `skill` and no other skill: LoRA training data (SPEC)."""
    return apply_skill(sample_base_scene(rng), skill, rng)


def sample_any_scene(rng: np.random.Generator, p_base: float = 0.3) -> Scene:
    """Base scenes, single skills and combinations: autoencoder training data (SPEC)."""
    scene = sample_base_scene(rng)
    if rng.random() < p_base:
        return scene
    for skill in rng.permutation(spec.TRIGGERS):
        if rng.random() < 0.35:
            scene = apply_skill(scene, str(skill), rng)
    if not scene.skills:
        scene = apply_skill(scene, _choice(rng, spec.TRIGGERS), rng)
    return scene


@dataclass(frozen=True)
class Task:
    """A composition task: the skills it names, and the scene whose caption asks for them."""

    skills: tuple[str, ...]
    scene: Scene

    @property
    def prompt(self) -> str:
        return caption(self.scene)


def task_skill_sets(n: int) -> list[tuple[str, ...]]:
    """Every set of n skills from different categories (two objects may go together), sorted."""
    from itertools import combinations

    out = []
    for combo in combinations(spec.TRIGGERS, n):
        cats = [spec.SKILLS[s].category for s in combo]
        n_obj = cats.count("character")
        if n_obj > 2 or len(set(cats)) + max(n_obj - 1, 0) != n:
            continue
        out.append(combo)
    return out


def task_for(skills: tuple[str, ...], rng: np.random.Generator) -> Task:
    """The scene for a task: object skills in slots (two: left, right), a base object when the
    task has none (so that the prompt reads like every other), background light or dark unless
    a background skill is named."""
    objs = [s for s in skills if s in spec.OBJECT_SKILLS]
    if len(objs) == 2:
        objects = tuple(SceneObject(k, slot) for k, slot in zip(objs, spec.TWO_OBJECT_SLOTS))
    elif len(objs) == 1:
        objects = (SceneObject(objs[0], _choice(rng, spec.SLOTS)),)
    else:
        objects = (random_base_object(_choice(rng, spec.SLOTS), rng),)
    bgs = [s for s in skills if s in spec.BACKGROUND_SKILLS]
    background = bgs[0] if bgs else _choice(rng, spec.BACKGROUNDS)
    scene = Scene(objects, background, halo="halo" in skills, framed="framed" in skills)
    return Task(tuple(skills), scene)


def sample_tasks(n: int, count: int, rng: np.random.Generator) -> list[Task]:
    """`count` tasks of n skills, skill sets drawn uniformly from task_skill_sets(n)."""
    sets = task_skill_sets(n)
    return [task_for(sets[int(rng.integers(len(sets)))], rng) for _ in range(count)]


def parse_caption(text: str) -> Scene | None:
    """The scene a caption of SPEC's grammar describes (the inverse of :func:`caption`), or None
    when the text does not follow the grammar (a free-form prompt)."""
    import re

    slots = {phrase: slot for slot, phrase in spec.SLOT_PHRASES.items()}
    text = " ".join(text.lower().split())
    framed = text.endswith(", framed")
    if framed:
        text = text[: -len(", framed")]
    m = re.fullmatch(r"an empty (\w+) background", text)
    if m:
        try:
            return Scene((), m.group(1), framed=framed)
        except ValueError:
            return None
    head, sep, bg = text.rpartition(", ")
    if not sep or not bg.endswith(" background"):
        return None
    background = bg[: -len(" background")]
    objects, halo = [], False
    for part in head.split(" and "):
        m = re.fullmatch(r"a (?:(\w+) )?(\w+)( with halo)? (on the left|in the center|on the right)", part)
        if not m:
            return None
        colour, kind, with_halo, where = m.groups()
        halo = halo or bool(with_halo)
        try:
            objects.append(SceneObject(kind, slots[where], colour))
        except ValueError:
            return None
    try:
        return Scene(tuple(objects), background, halo, framed)
    except ValueError:
        return None
