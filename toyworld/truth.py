"""Where each skill of a task truly is: the masks an oracle composition gives each LoRA.

Per skill of a task, a mask over the image: an object skill's slot box (the 25 x 25 box the
detector searches), a background skill everything outside the boxes of the scene's objects, the
halo the objects' boxes (its band lies within them: objects reach 11-12 px from the centre, the
band 3 px further, the box 12), and the frame the whole image (a style acts everywhere). Averaged
down to the latent grid, they are the masks an oracle hands to a grounded composition method.
"""
from __future__ import annotations

import numpy as np

from toyworld import spec
from toyworld.captions import Task
from toyworld.detect import slot_box


def skill_mask(task: Task, skill: str) -> np.ndarray:
    """(SIZE, SIZE) float mask of where ``skill`` belongs in ``task``'s scene."""
    scene = task.scene
    boxes = np.zeros((spec.SIZE, spec.SIZE), dtype=bool)
    for o in scene.objects:
        boxes |= slot_box(o.slot)
    if skill in spec.OBJECT_SKILLS:
        m = np.zeros_like(boxes)
        for o in scene.objects:
            if o.kind == skill:
                m |= slot_box(o.slot)
        return m.astype(np.float32)
    if skill in spec.BACKGROUND_SKILLS:
        return (~boxes).astype(np.float32)
    if skill == "halo":
        return boxes.astype(np.float32)
    if skill == "framed":
        return np.ones_like(boxes, dtype=np.float32)
    raise ValueError(f"unknown skill {skill!r}")


def latent_masks(task: Task, skills: list[str] | tuple[str, ...], factor: int = 4) -> np.ndarray:
    """(N, SIZE / factor, SIZE / factor) masks, each pixel mask averaged over its latent cell."""
    out = []
    for s in skills:
        m = skill_mask(task, s)
        out.append(m.reshape(spec.SIZE // factor, factor, spec.SIZE // factor, factor).mean(axis=(1, 3)))
    return np.stack(out)
