"""Pixel-arithmetic detector for ToyWorld images, written to SPEC.md's Detection section.

Skills: `object_skill_at`, `background_skill`, `has_halo`, `is_framed`, and `task_succeeds`
(SPEC's success rule). Base attributes, for evaluating the base model: `base_object_at`,
`base_background` (solid or a v2 generic pattern), and `scene_correct`.

Where SPEC leaves a choice open, the choice is written down here:
- the 5x5 corner blocks must each hold under 20% matching pixels (not their average);
- `halo` must hold around every object of the scene (the band is taken around the pixels of the
  object's colour inside its slot box);
- base shapes (not in SPEC's skill list) are classified by the best overlap (IoU) of the
  matching pixels with each shape's template near their centroid.
"""

from __future__ import annotations

import numpy as np

from toyworld import spec
from toyworld.captions import Task
from toyworld.render import frame_mask, halo_band, nominal_area, pattern_first, shape_mask
from toyworld.scene import Scene

_HALF = spec.SLOT_BOX // 2
_AREAS = {k: nominal_area(k) for k in spec.SHAPES + spec.OBJECT_SKILLS}
OBJECT_SHAPE_IOU = 0.6  # base shapes: least template overlap to count as that shape
EMPTY_SLOT_SHAPE_IOU = OBJECT_SHAPE_IOU


def colour_match(img: np.ndarray, rgb: spec.RGB) -> np.ndarray:
    """Pixels within Euclidean RGB distance 60 of `rgb`."""
    d = img.astype(np.int32) - np.asarray(rgb, dtype=np.int32)
    return (d * d).sum(axis=-1) <= spec.MATCH_DISTANCE**2


def slot_box(slot: str) -> np.ndarray:
    """Mask of the 25x25 box centred on the slot's nominal centre."""
    cx, cy = spec.SLOTS[slot], spec.SLOT_Y
    m = np.zeros((spec.SIZE, spec.SIZE), dtype=bool)
    m[cy - _HALF : cy + _HALF + 1, cx - _HALF : cx + _HALF + 1] = True
    return m


def _centroid(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(round(xs.mean())), int(round(ys.mean()))


def _corner_fractions(match: np.ndarray, cx: int, cy: int) -> list[float]:
    """Matching fraction of each 5x5 corner block of the 23x23 box centred on (cx, cy); parts
    off the canvas count as not matching."""
    h, b = spec.CORNER_BOX // 2, spec.CORNER_BLOCK
    padded = np.pad(match, spec.SIZE)  # so that blocks near the edge index safely
    out = []
    for x0 in (cx - h, cx + h - b + 1):
        for y0 in (cy - h, cy + h - b + 1):
            block = padded[y0 + spec.SIZE : y0 + spec.SIZE + b, x0 + spec.SIZE : x0 + spec.SIZE + b]
            out.append(float(block.mean()))
    return out


def object_skill_at(img: np.ndarray, skill: str, slot: str) -> bool:
    """SPEC: enough of the skill's colour in the slot box, and the shape test at its centroid."""
    match = colour_match(img, spec.OBJECT_COLOURS[skill])
    inbox = match & slot_box(slot)
    if inbox.sum() < spec.OBJECT_MIN_COVER * _AREAS[skill]:
        return False
    cx, cy = _centroid(inbox)
    if skill == "kiki":
        return not match[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2].any()
    corners_ok = all(f < spec.CORNER_MAX for f in _corner_fractions(match, cx, cy))
    if skill == "bouba":
        return corners_ok
    if skill == "mimi":
        return corners_ok and bool(match[cy, cx])
    raise ValueError(f"not an object skill: {skill!r}")


def _outside(object_slots) -> np.ndarray:
    out = np.ones((spec.SIZE, spec.SIZE), dtype=bool)
    for slot in object_slots:
        out &= ~slot_box(slot)
    return out


def background_skill(img: np.ndarray, skill: str, object_slots) -> bool:
    """SPEC: outside the boxes of the slots that hold objects, the pattern's two colours cover
    >= 70%, and for some shift of up to 2 px each colour matches >= 60% of where it belongs."""
    first, second = spec.PATTERNS[skill]
    outside = _outside(object_slots)
    m1, m2 = colour_match(img, first) & outside, colour_match(img, second) & outside
    if (m1 | m2).sum() < spec.BACKGROUND_MIN_COVER * outside.sum():
        return False
    r = spec.BACKGROUND_SHIFT
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            p = pattern_first(skill, dx, dy)
            where1, where2 = p & outside, ~p & outside
            if (
                (m1 & where1).sum() >= spec.BACKGROUND_MIN_PER_COLOUR * where1.sum()
                and (m2 & where2).sum() >= spec.BACKGROUND_MIN_PER_COLOUR * where2.sum()
            ):
                return True
    return False


def solid_background(img: np.ndarray, name: str, object_slots) -> bool:
    """Base background: its colour matches >= 70% of the pixels outside the object boxes."""
    outside = _outside(object_slots)
    return bool((colour_match(img, spec.BACKGROUNDS[name]) & outside).sum() >= spec.BACKGROUND_MIN_COVER * outside.sum())


def base_background(img: np.ndarray, name: str, object_slots) -> bool:
    """A base-world background (v2: solid, or a generic pattern tested as a background skill is)."""
    if name in spec.GENERIC_PATTERNS:
        return background_skill(img, name, object_slots)
    return solid_background(img, name, object_slots)


def has_halo(img: np.ndarray, objects: list[tuple[spec.RGB, str]]) -> bool:
    """SPEC: >= 40% of the band (Chebyshev distance 2-3) around each object matches white.
    `objects` lists (colour, slot) of the objects the halo should surround."""
    if not objects:
        return False
    white = colour_match(img, spec.HALO_RGB)
    for rgb, slot in objects:
        obj = colour_match(img, rgb) & slot_box(slot)
        if not obj.any():
            return False
        band = halo_band(obj)
        if white[band].mean() < spec.HALO_MIN:
            return False
    return True


def is_framed(img: np.ndarray) -> bool:
    """SPEC: >= 80% of the 3-px border matches black."""
    return bool(colour_match(img, spec.FRAME_RGB)[frame_mask()].mean() >= spec.FRAME_MIN)


_R = 12  # every shape fits in a 25x25 window around its centre
_TEMPLATES = {
    k: shape_mask(k, spec.SIZE // 2, spec.SIZE // 2)[32 - _R : 32 + _R + 1, 32 - _R : 32 + _R + 1]
    for k in spec.SHAPES
}


def _best_iou(mask: np.ndarray, kind: str, search: int = 3) -> float:
    """Best IoU of `mask` with the shape's template centred within `search` px of where the
    template's own centroid would put it (the triangle's centroid sits below its centre)."""
    t = _TEMPLATES[kind]
    tcx, tcy = _centroid(t)
    cx, cy = _centroid(mask)
    cx, cy = cx - (tcx - _R), cy - (tcy - _R)
    pad = _R + search + 1
    padded = np.pad(mask, pad)
    total, t_area = int(mask.sum()), int(t.sum())
    best = 0.0
    for dy in range(-search, search + 1):
        for dx in range(-search, search + 1):
            y0, x0 = cy + dy - _R + pad, cx + dx - _R + pad
            inter = int((padded[y0 : y0 + 2 * _R + 1, x0 : x0 + 2 * _R + 1] & t).sum())
            best = max(best, inter / (total + t_area - inter))
    return best


def base_object_at(img: np.ndarray, slot: str) -> tuple[str, str] | None:
    """(colour, shape) of the base object at `slot`, or None: the colour with most matching
    pixels in the slot box, if they cover half a shape and overlap its template well."""
    box = slot_box(slot)
    counts = {c: (colour_match(img, rgb) & box) for c, rgb in spec.COLOURS.items()}
    colour = max(counts, key=lambda c: counts[c].sum())
    mask = counts[colour]
    if mask.sum() < spec.OBJECT_MIN_COVER * min(_AREAS[s] for s in spec.SHAPES):
        return None
    ious = {s: _best_iou(mask, s) for s in spec.SHAPES}
    shape = max(ious, key=ious.get)
    if ious[shape] < OBJECT_SHAPE_IOU or mask.sum() < spec.OBJECT_MIN_COVER * _AREAS[shape]:
        return None
    return colour, shape


def scene_correct(img: np.ndarray, scene: Scene) -> dict[str, bool]:
    """Base-model check of a base-world scene: background, every object's colour and shape at
    its slot, nothing at the other slots. `all` is the conjunction."""
    slots = [o.slot for o in scene.objects]
    out = {"background": base_background(img, scene.background, slots)}
    for o in scene.objects:
        found = base_object_at(img, o.slot)
        out[f"{o.slot}_colour"] = found is not None and found[0] == o.colour
        out[f"{o.slot}_shape"] = found is not None and found[1] == o.kind
    for slot in spec.SLOTS:
        if slot not in slots and not (len(scene.objects) == 2 and slot == "center"):
            # Between two objects the centre box holds parts of both, so it is not checked.
            out[f"{slot}_empty"] = base_object_at(img, slot) is None
    out["all"] = all(out.values())
    return out


def task_succeeds(img: np.ndarray, task: Task) -> bool:
    """SPEC: every skill the task names is detected, and no object skill it does not name is
    detected at any slot."""
    for skill in task.skills:
        if not skill_shown(img, task.scene, skill):
            return False
    for skill in spec.OBJECT_SKILLS:
        if skill not in task.skills and any(object_skill_at(img, skill, s) for s in spec.SLOTS):
            return False
    return True


def skill_shown(img: np.ndarray, scene: Scene, skill: str) -> bool:
    """Is `skill` detected where `scene` asks for it (every object of that kind, for objects)?"""
    slots = [o.slot for o in scene.objects]
    if skill in spec.OBJECT_SKILLS:
        places = [o.slot for o in scene.objects if o.kind == skill]
        return bool(places) and all(object_skill_at(img, skill, s) for s in places)
    if skill in spec.BACKGROUND_SKILLS:
        return background_skill(img, skill, slots)
    if skill == "halo":
        return has_halo(img, [(o.rgb, o.slot) for o in scene.objects])
    if skill == "framed":
        return is_framed(img)
    raise ValueError(f"unknown skill {skill!r}")


def skill_anywhere(img: np.ndarray, scene: Scene, skill: str) -> bool:
    """Is `skill` drawn although `scene` (a base scene) does not ask for it: an object skill in
    place of any of the scene's objects, a pattern behind them, a halo around them, a frame."""
    if skill in spec.OBJECT_SKILLS:
        return any(object_skill_at(img, skill, o.slot) for o in scene.objects)
    if skill in spec.BACKGROUND_SKILLS:
        return background_skill(img, skill, [o.slot for o in scene.objects])
    if skill == "halo":
        return bool(scene.objects) and has_halo(img, [(o.rgb, o.slot) for o in scene.objects])
    if skill == "framed":
        return is_framed(img)
    raise ValueError(f"unknown skill {skill!r}")
