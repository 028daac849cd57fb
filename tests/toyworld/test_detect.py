"""The detector against clean renders: every skill and base attribute is found where it is
drawn and (almost) never where it is not. SPEC's detection rules, checked on many seeds."""

import numpy as np
import pytest

from toyworld import detect, spec
from toyworld.captions import (
    sample_any_scene,
    sample_base_scene,
    sample_skill_scene,
    sample_tasks,
    task_for,
    task_skill_sets,
)
from toyworld.render import render
from toyworld.scene import Scene, SceneObject

N = 200  # renders per skill


def shown(img, scene, skill):
    """Detections of `skill` where `scene` draws it (one per object for object skills)."""
    slots = [o.slot for o in scene.objects]
    if skill in spec.OBJECT_SKILLS:
        return [detect.object_skill_at(img, skill, o.slot) for o in scene.objects if o.kind == skill]
    if skill in spec.BACKGROUND_SKILLS:
        return [detect.background_skill(img, skill, slots)]
    if skill == "halo":
        return [detect.has_halo(img, [(o.rgb, o.slot) for o in scene.objects])]
    return [detect.is_framed(img)]


def not_shown(img, scene, skill):
    """Detections of `skill` where `scene` does not draw it."""
    if skill in spec.OBJECT_SKILLS:
        taken = {o.slot for o in scene.objects if o.kind == skill}
        return [detect.object_skill_at(img, skill, s) for s in spec.SLOTS if s not in taken]
    if skill == "halo" and not scene.objects:
        return []
    return shown(img, scene, skill)


@pytest.mark.parametrize("skill", spec.TRIGGERS)
def test_skill_detected_on_every_clean_render(skill):
    rng = np.random.default_rng(100 + spec.TRIGGERS.index(skill))
    hits = []
    for _ in range(N):
        scene = sample_skill_scene(skill, rng)  # what its LoRA is trained on
        hits += shown(render(scene, rng), scene, skill)
    assert len(hits) >= N and all(hits)


@pytest.mark.parametrize("skill", spec.TRIGGERS)
def test_skill_rarely_detected_where_absent(skill):
    rng = np.random.default_rng(200 + spec.TRIGGERS.index(skill))
    false = []
    while len(false) < N:
        scene = sample_any_scene(rng, p_base=0.4)
        if skill in scene.skills:
            continue
        if skill == "halo" and scene.background in ("checkerboard", "dots"):
            continue  # SPEC cannot tell these apart: see test_halo_contract_blind_spot
        false += not_shown(render(scene, rng), scene, skill)
    assert np.mean(false) <= 0.02


def test_halo_contract_blind_spot():
    """SPEC's colour match puts white within 60 of the checkerboard's light squares and of the
    dots' ground, so on those backgrounds `halo` is detected without one. Documented, not fixed:
    the detector follows the contract; task sets pairing halo with them are weak evidence."""
    white = np.array(spec.HALO_RGB)
    for name in ("checkerboard", "dots"):
        assert np.linalg.norm(white - spec.PATTERN_COLOURS[name][1]) <= spec.MATCH_DISTANCE
    assert np.linalg.norm(white - spec.PATTERN_COLOURS["stripes"][1]) > spec.MATCH_DISTANCE
    for bg in spec.BACKGROUNDS.values():
        assert np.linalg.norm(white - bg) > spec.MATCH_DISTANCE


def test_skills_survive_combinations():
    """Every skill of random combinations, except SPEC's one known gap: stripes behind two
    haloed objects in a frame leave under 70% of the outside pixels in stripe colours."""
    rng = np.random.default_rng(3)
    for _ in range(400):
        scene = sample_any_scene(rng, p_base=0.0)
        img = render(scene, rng)
        for skill in scene.skills:
            gap = skill == "stripes" and scene.halo and scene.framed and len(scene.objects) == 2
            if not gap:
                assert all(shown(img, scene, skill)), (skill, scene)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_task_succeeds_on_its_clean_render(n):
    rng = np.random.default_rng(n)
    for skills in task_skill_sets(n):
        for _ in range(5):
            task = task_for(skills, rng)
            assert detect.task_succeeds(render(task.scene, rng), task), task


def test_task_fails_without_its_skills():
    """A render of the task's scene minus one named skill, or plus an unnamed object, fails."""
    rng = np.random.default_rng(9)
    for task in sample_tasks(3, 60, rng):
        s = task.scene
        for skill in task.skills:
            if skill in spec.OBJECT_SKILLS:
                objs = tuple(SceneObject("circle", o.slot, "red") if o.kind == skill else o for o in s.objects)
                wrong = Scene(objs, s.background, s.halo, s.framed)
            elif skill in spec.BACKGROUND_SKILLS:
                wrong = Scene(s.objects, "light", s.halo, s.framed)
            elif skill == "halo":
                if s.background in ("checkerboard", "dots"):
                    continue  # SPEC's blind spot, see above
                wrong = Scene(s.objects, s.background, False, s.framed)
            else:
                wrong = Scene(s.objects, s.background, s.halo, False)
            assert not detect.task_succeeds(render(wrong, rng), task), (skill, task)
    # An object skill the task does not name, drawn in a free slot, fails the task.
    task = task_for(("kiki", "framed"), rng)
    extra = next(k for k in spec.OBJECT_SKILLS if k != "kiki")
    scene = Scene((SceneObject("kiki", "left"), SceneObject(extra, "right")), "light", framed=True)
    assert not detect.task_succeeds(render(scene, rng), task)


def test_base_scene_attributes():
    rng = np.random.default_rng(4)
    for _ in range(N):
        scene = sample_base_scene(rng)
        assert detect.scene_correct(render(scene, rng), scene)["all"], scene


def _perturb(scene: Scene, rng) -> Scene:
    """The same scene with one attribute changed: background, a colour, a shape or a slot."""
    other = lambda seq, x: [y for y in seq if y != x][int(rng.integers(len(seq) - 1))]
    what = rng.integers(4) if scene.objects else 0
    objs = list(scene.objects)
    if what == 0:
        return Scene(scene.objects, other(tuple(spec.BACKGROUNDS), scene.background))
    i = int(rng.integers(len(objs)))
    o = objs[i]
    if what == 1:
        objs[i] = SceneObject(o.kind, o.slot, other(tuple(spec.COLOURS), o.colour))
    elif what == 2:
        objs[i] = SceneObject(other(spec.SHAPES, o.kind), o.slot, o.colour)
    elif len(objs) == 1:
        objs[i] = SceneObject(o.kind, other(tuple(spec.SLOTS), o.slot), o.colour)
    else:
        objs = [SceneObject(objs[1].kind, "left", objs[1].colour), SceneObject(objs[0].kind, "right", objs[0].colour)]
        if objs[0].kind == objs[1].kind and objs[0].colour == objs[1].colour:
            return _perturb(scene, rng)
    return Scene(tuple(objs), scene.background)


def test_base_attributes_rarely_detected_wrong():
    rng = np.random.default_rng(5)
    wrong = []
    for _ in range(N):
        scene = sample_base_scene(rng)
        img = render(scene, rng)
        wrong.append(detect.scene_correct(img, _perturb(scene, rng))["all"])
    assert np.mean(wrong) <= 0.02


def test_base_object_reads_colour_and_shape():
    rng = np.random.default_rng(6)
    for shape in spec.SHAPES:
        for colour in spec.COLOURS:
            for slot in spec.SLOTS:
                img = render(Scene((SceneObject(shape, slot, colour),), "dark"), rng)
                assert detect.base_object_at(img, slot) == (colour, shape)


def test_empty_and_object_skill_slots_hold_no_base_object():
    rng = np.random.default_rng(7)
    img = render(Scene((SceneObject("mimi", "center"),), "light"), rng)
    assert all(detect.base_object_at(img, s) is None for s in spec.SLOTS)
    img = render(Scene((), "checkerboard"), rng)
    assert all(detect.base_object_at(img, s) is None for s in spec.SLOTS)


@pytest.mark.parametrize("skill", list(spec.TRIGGERS))
def test_skill_anywhere_against_base_scenes(skill):
    """The off-prompt check: a clean base render shows no skill; the same scene drawn with the
    skill (its object in place of a base object, its pattern, halo or frame) shows it."""
    rng = np.random.default_rng(5)
    hits_base, hits_skill = 0, 0
    for _ in range(40):
        base = sample_base_scene(rng, p_empty=0.0)
        hits_base += detect.skill_anywhere(render(base, rng), base, skill)
        objs = list(base.objects)
        if skill in spec.OBJECT_SKILLS:
            o = objs[0]
            objs[0] = SceneObject(skill, o.slot)
        kw = dict(background=skill) if skill in spec.BACKGROUND_SKILLS else {}
        with_skill = Scene(tuple(objs), kw.get("background", base.background), halo=skill == "halo" or base.halo,
                           framed=skill == "framed" or base.framed)
        hits_skill += detect.skill_anywhere(render(with_skill, rng), base, skill)
    assert hits_base == 0
    assert hits_skill >= 38
