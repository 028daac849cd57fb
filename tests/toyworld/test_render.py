"""Hand-checked pixel facts of the ToyWorld renderer (SPEC.md)."""

import numpy as np
import pytest

from toyworld import spec
from toyworld.render import background_image, halo_band, nominal_area, render, shape_mask
from toyworld.scene import Scene, SceneObject


class FixedJitter:
    """Stands in for a numpy Generator: every jitter draw returns the given offsets."""

    def __init__(self, jx: int = 0, jy: int = 0) -> None:
        self.j = np.array([jx, jy])

    def integers(self, low, high, size):
        return self.j


def test_shape_areas():
    # circle r=10: 317 lattice points; square 19x19; plus 2*23*7-7*7; diamond 2*12*13+1;
    # ring: 5^2 < d^2 <= 11^2 is 377 - 81 lattice points.
    assert nominal_area("circle") == 317
    assert nominal_area("square") == 19 * 19
    assert nominal_area("bouba") == 2 * 23 * 7 - 7 * 7
    assert nominal_area("mimi") == 2 * 12 * 13 + 1
    assert nominal_area("kiki") == 377 - 81


def test_triangle_vertices_and_rows():
    m = shape_mask("triangle", 32, 32)
    assert m[22, 32] and not m[21, 32] and not m[22, 31]  # apex (cx, cy-10) alone on its row
    assert m[41, 21] and m[41, 43] and not m[41, 20] and not m[41, 44]  # base cx-11..cx+11
    assert not m[42].any()  # nothing below cy+9
    widths = m.sum(axis=1)[22:42]
    assert (np.diff(widths) >= 0).all()  # widens downwards


def test_circle_pixels():
    img = render(Scene((SceneObject("circle", "center", "red"),), "light"), FixedJitter())
    red = (img == spec.COLOURS["red"]).all(-1)
    assert red.sum() == 317
    assert red[32, 22] and red[32, 42] and not red[32, 21] and not red[32, 43]
    assert (img[0, 0] == spec.BACKGROUNDS["light"]).all()


def test_slot_centres_and_jitter():
    for slot, cx in spec.SLOTS.items():
        img = render(Scene((SceneObject("square", slot, "blue"),), "dark"), FixedJitter(2, -2))
        ys, xs = np.nonzero((img == spec.COLOURS["blue"]).all(-1))
        assert (xs.min(), xs.max()) == (cx + 2 - 9, cx + 2 + 9)
        assert (ys.min(), ys.max()) == (30 - 9, 30 + 9)


def test_jitter_is_seeded_and_bounded():
    scene = Scene((SceneObject("kiki", "left"),), "light")
    a = render(scene, np.random.default_rng(5))
    b = render(scene, np.random.default_rng(5))
    assert (a == b).all()
    centres = set()
    rng = np.random.default_rng(0)
    for _ in range(300):
        ys, xs = np.nonzero((render(scene, rng) == spec.OBJECT_COLOURS["kiki"]).all(-1))
        centres.add(((xs.min() + xs.max()) // 2, (ys.min() + ys.max()) // 2))
    assert centres == {(x, y) for x in range(16, 21) for y in range(30, 35)}


def test_checkerboard_colours():
    img = background_image("checkerboard")
    dark, light = spec.PATTERN_COLOURS["checkerboard"]
    assert tuple(img[0, 0]) == dark and tuple(img[0, 7]) == dark
    assert tuple(img[0, 8]) == light  # (x=8, y=0)
    assert tuple(img[8, 0]) == light and tuple(img[8, 8]) == dark


def test_stripes_and_dots():
    s = background_image("stripes")
    assert tuple(s[3, 10]) == (120, 80, 40) and tuple(s[4, 10]) == (230, 210, 170)
    d = background_image("dots")
    assert tuple(d[5, 5]) == (20, 30, 90) and tuple(d[5, 7]) == (20, 30, 90)
    assert tuple(d[6, 7]) == (210, 230, 250) and tuple(d[0, 0]) == (210, 230, 250)
    assert tuple(d[63, 5]) == (20, 30, 90)  # the disc centred at y=65 shows on the last row
    # 36 whole discs of 13 px; the discs centred at x=65 or y=65 show one pixel each (6 + 6).
    assert (d == (20, 30, 90)).all(-1).sum() == 36 * 13 + 12


def test_halo_band_and_order():
    square = shape_mask("square", 32, 32)
    band = halo_band(square)
    assert band.sum() == 25**2 - 21**2  # Chebyshev 2..3 around a 19x19 square
    img = render(
        Scene((SceneObject("square", "center", "green"),), "dark", halo=True), FixedJitter()
    )
    assert tuple(img[32, 32 + 11]) == spec.HALO_RGB and tuple(img[32, 32 + 10]) == spec.BACKGROUNDS["dark"]
    assert tuple(img[32, 32 + 9]) == spec.COLOURS["green"]


def test_frame_drawn_last():
    img = render(Scene((SceneObject("kiki", "left"),), "checkerboard", framed=True), FixedJitter())
    assert (img[:3] == 0).all() and (img[:, -3:] == 0).all()
    assert tuple(img[3, 3]) == spec.PATTERN_COLOURS["checkerboard"][0]
    assert tuple(img[3, 8]) == spec.PATTERN_COLOURS["checkerboard"][1]


def test_scene_validation():
    with pytest.raises(ValueError):
        SceneObject("kiki", "left", "red")
    with pytest.raises(ValueError):
        Scene((SceneObject("circle", "center", "red"), SceneObject("circle", "right", "red")))
    with pytest.raises(ValueError):
        Scene((), "light", halo=True)
