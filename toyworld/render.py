"""Render a Scene to a 64x64 uint8 RGB array, exactly as SPEC.md draws it.

Drawing order (SPEC): background, then every object's halo band, then the objects, then the
frame. Halos of all objects go down before any object so that one object's halo never covers
the other object.
"""

from __future__ import annotations

import numpy as np

from toyworld import spec
from toyworld.scene import Scene, SceneObject

_Y, _X = np.mgrid[0 : spec.SIZE, 0 : spec.SIZE]


def shape_mask(kind: str, cx: int, cy: int) -> np.ndarray:
    """Boolean SIZE x SIZE mask of the pixels of `kind` centred on (cx, cy)."""
    dx, dy = _X - cx, _Y - cy
    if kind == "circle":
        return dx**2 + dy**2 <= 10**2
    if kind == "square":
        return (np.abs(dx) <= 9) & (np.abs(dy) <= 9)
    if kind == "triangle":
        # Apex (cx, cy-10), base (cx-11, cy+9)..(cx+11, cy+9): the half-width grows by 11 px over
        # 19 rows. Integer form of |dx| <= 11 * (dy + 10) / 19, so no float rounding decides.
        return (dy >= -10) & (dy <= 9) & (19 * np.abs(dx) <= 11 * (dy + 10))
    if kind == "kiki":
        d2 = dx**2 + dy**2
        return (d2 > 5**2) & (d2 <= 11**2)
    if kind == "bouba":
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= 11) & (ay <= 3)) | ((ax <= 3) & (ay <= 11))
    if kind == "mimi":
        return np.abs(dx) + np.abs(dy) <= 12
    raise ValueError(f"unknown shape {kind!r}")


def nominal_area(kind: str) -> int:
    """Pixel count of the shape drawn away from the canvas edge."""
    return int(shape_mask(kind, spec.SIZE // 2, spec.SIZE // 2).sum())


def _discs(x: np.ndarray, y: np.ndarray, offset: int, pitch: int, radius: int) -> np.ndarray:
    """Discs of `radius` centred at (offset + pitch*i, offset + pitch*j): the modulo form finds
    the nearest centre, off the canvas too, so edge discs are cut, not missing."""
    half = pitch // 2
    ox = (x - offset + half) % pitch - half
    oy = (y - offset + half) % pitch - half
    return ox**2 + oy**2 <= radius**2


def pattern_first(name: str, dx: int = 0, dy: int = 0) -> np.ndarray:
    """Mask where a pattern (a background skill or a v2 generic background) shows its first
    colour (spec.PATTERNS[name][0]), shifted by (dx, dy) pixels (the detector searches shifts)."""
    x, y = _X - dx, _Y - dy
    if name == "checkerboard":
        return (x // spec.CHECKER_CELL + y // spec.CHECKER_CELL) % 2 == 0
    if name == "stripes":
        return (y // spec.STRIPE_HEIGHT) % 2 == 0
    if name == "dots":
        return _discs(x, y, spec.DOT_OFFSET, spec.DOT_PITCH, spec.DOT_RADIUS)
    if name == "tiled":
        return (x // spec.TILE_CELL + y // spec.TILE_CELL) % 2 == 0
    if name == "banded":
        return (x // spec.BAND_WIDTH) % 2 == 0
    if name == "speckled":
        return _discs(x, y, spec.SPECK_OFFSET, spec.SPECK_PITCH, spec.SPECK_RADIUS)
    raise ValueError(f"unknown pattern {name!r}")


def background_image(background: str) -> np.ndarray:
    """SIZE x SIZE x 3 uint8 background: solid or a pattern."""
    img = np.empty((spec.SIZE, spec.SIZE, 3), dtype=np.uint8)
    if background in spec.BACKGROUNDS:
        img[:] = spec.BACKGROUNDS[background]
        return img
    first, second = spec.PATTERNS[background]
    img[:] = second
    img[pattern_first(background)] = first
    return img


def chebyshev_dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels within Chebyshev distance r of a pixel of `mask` (square dilation)."""
    out = mask.copy()
    # Separable: a (2r+1)-wide square is a row dilation then a column dilation.
    for axis in (0, 1):
        grown = out.copy()
        for s in range(1, r + 1):
            grown |= _shift(out, s, axis) | _shift(out, -s, axis)
        out = grown
    return out


def _shift(mask: np.ndarray, s: int, axis: int) -> np.ndarray:
    out = np.zeros_like(mask)
    if axis == 0:
        if s > 0:
            out[s:] = mask[:-s]
        else:
            out[:s] = mask[-s:]
    else:
        if s > 0:
            out[:, s:] = mask[:, :-s]
        else:
            out[:, :s] = mask[:, -s:]
    return out


def halo_band(mask: np.ndarray) -> np.ndarray:
    """Pixels at Chebyshev distance 2 or 3 from the nearest pixel of `mask`."""
    return chebyshev_dilate(mask, spec.HALO_OUTER) & ~chebyshev_dilate(mask, spec.HALO_INNER - 1)


def frame_mask() -> np.ndarray:
    w = spec.FRAME_WIDTH
    m = np.zeros((spec.SIZE, spec.SIZE), dtype=bool)
    m[:w] = m[-w:] = True
    m[:, :w] = m[:, -w:] = True
    return m


def object_centre(obj: SceneObject, rng: np.random.Generator) -> tuple[int, int]:
    """Nominal slot centre plus the SPEC jitter, drawn x then y from `rng`."""
    jx, jy = rng.integers(-spec.JITTER, spec.JITTER + 1, size=2)
    return spec.SLOTS[obj.slot] + int(jx), spec.SLOT_Y + int(jy)


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Draw `scene`; `rng` supplies the object jitter, so equal seeds give equal images."""
    img = background_image(scene.background)
    masks = [shape_mask(o.kind, *object_centre(o, rng)) for o in scene.objects]
    if scene.halo:
        for m in masks:
            img[halo_band(m)] = spec.HALO_RGB
    for obj, m in zip(scene.objects, masks):
        img[m] = obj.rgb
    if scene.framed:
        img[frame_mask()] = spec.FRAME_RGB
    return img
