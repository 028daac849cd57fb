"""The quality benchmark's tasks (benchmarks/bench_toyworld_quality.build_tasks): a seed number
names one scene, whatever the run's size, so that runs compare task by task."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bench_toyworld_quality import build_tasks


def _scenes(tasks: list[dict]) -> dict:
    return {(tuple(t["skills"]), t["seed"]): t["task"] for t in tasks}


def test_a_seed_is_the_same_scene_in_runs_of_any_size():
    four, eight, later = (_scenes(build_tasks(4, 12)), _scenes(build_tasks(8, 12)),
                          _scenes(build_tasks(2, 12, first_seed=2)))
    assert len(four) == 100 + 4 * 12 * 2 and len(eight) == 2 * len(four)
    assert all(eight[k] == v for k, v in four.items())
    assert all(eight[k] == v for k, v in later.items())


def test_the_seeds_of_a_skill_set_draw_different_scenes():
    tasks = build_tasks(8, 12, ns=(2,))
    by_set: dict = {}
    for t in tasks:
        by_set.setdefault(tuple(t["skills"]), set()).add(repr(t["task"]))
    # A set's scenes vary in slots and background only (two objects: a handful of scenes in all).
    assert all(len(scenes) >= 2 for scenes in by_set.values()), "every seed of a set draws the same scene"
    assert sum(len(scenes) for scenes in by_set.values()) > 3 * len(by_set)
