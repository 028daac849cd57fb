"""ToyWorld v2 constants, copied number for number from /work/shared/toyworld/SPEC.md.

Everything else in the package (renderer, captions, detector, training) reads its numbers from
here, so that the contract lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]

SIZE = 64  # canvas is SIZE x SIZE, x to the right, y down, origin top-left

# Base world.
BACKGROUNDS: dict[str, RGB] = {"light": (200, 200, 200), "dark": (60, 60, 60)}  # solid
# v2: generic patterned backgrounds of the base world, (first colour, second colour) as for the
# skill patterns below; "first" is where the pattern's predicate holds.
GENERIC_PATTERNS: dict[str, tuple[RGB, RGB]] = {
    "tiled": ((110, 140, 110), (150, 180, 150)),  # first where (x//16 + y//16) even
    "banded": ((90, 60, 120), (160, 140, 200)),  # first where (x//6) even
    "speckled": ((60, 120, 120), (180, 160, 120)),  # first inside the discs
}
TILE_CELL = 16
BAND_WIDTH = 6
SPECK_RADIUS = 3
SPECK_PITCH = 12
SPECK_OFFSET = 6
BASE_BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUNDS) + tuple(GENERIC_PATTERNS)
P_GENERIC_BACKGROUND = 0.5  # half of the base scenes have a generic pattern, drawn uniformly
COLOURS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (50, 90, 220),
    "yellow": (230, 200, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SLOTS: dict[str, int] = {"left": 18, "center": 32, "right": 46}  # nominal cx
SLOT_Y = 32
JITTER = 2  # centre jitter, uniform integer in [-JITTER, JITTER] in x and in y
SLOT_PHRASES: dict[str, str] = {
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
}
TWO_OBJECT_SLOTS: tuple[str, str] = ("left", "right")

# Skills.
OBJECT_COLOURS: dict[str, RGB] = {
    "kiki": (250, 140, 20),  # orange ring
    "bouba": (20, 200, 210),  # cyan plus
    "mimi": (240, 110, 170),  # pink diamond
}
PATTERN_COLOURS: dict[str, tuple[RGB, RGB]] = {
    # (first colour, second colour); "first" is where the pattern's predicate holds.
    "checkerboard": ((30, 30, 30), (225, 225, 225)),  # first where (x//8 + y//8) even
    "stripes": ((120, 80, 40), (230, 210, 170)),  # first where (y//4) even
    "dots": ((20, 30, 90), (210, 230, 250)),  # first inside the discs
}
CHECKER_CELL = 8
STRIPE_HEIGHT = 4
DOT_RADIUS = 2
DOT_PITCH = 10
DOT_OFFSET = 5
HALO_RGB: RGB = (255, 255, 255)
HALO_INNER, HALO_OUTER = 2, 3  # Chebyshev distance band from the object
FRAME_RGB: RGB = (0, 0, 0)
FRAME_WIDTH = 3


@dataclass(frozen=True)
class Skill:
    """One LoRA-able concept: its trigger word is its name."""

    name: str
    category: str  # character | background | clothing | style

    @property
    def trigger(self) -> str:
        return self.name


SKILLS: dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("kiki", "character"),
        Skill("bouba", "character"),
        Skill("mimi", "character"),
        Skill("checkerboard", "background"),
        Skill("stripes", "background"),
        Skill("dots", "background"),
        Skill("halo", "clothing"),
        Skill("framed", "style"),
    )
}
OBJECT_SKILLS: tuple[str, ...] = ("kiki", "bouba", "mimi")
BACKGROUND_SKILLS: tuple[str, ...] = ("checkerboard", "stripes", "dots")
# Every two-colour pattern, skills and generic ones: what the renderer and detector draw and test.
PATTERNS: dict[str, tuple[RGB, RGB]] = {**PATTERN_COLOURS, **GENERIC_PATTERNS}
TRIGGERS: tuple[str, ...] = tuple(SKILLS)

# Detection thresholds.
MATCH_DISTANCE = 60.0  # Euclidean RGB distance for a colour match
SLOT_BOX = 25  # object search box side, centred on the slot's nominal centre
OBJECT_MIN_COVER = 0.5  # fraction of the shape's nominal area
CORNER_BOX = 23  # box around the centroid whose 5x5 corners must be near empty
CORNER_BLOCK = 5
CORNER_MAX = 0.2
BACKGROUND_MIN_COVER = 0.7
BACKGROUND_SHIFT = 2
BACKGROUND_MIN_PER_COLOUR = 0.6
HALO_MIN = 0.4
FRAME_MIN = 0.8

# Caption noise: words that mean nothing in this world (SPEC asks for at least 50 besides the
# triggers). Made-up words, so none collides with the caption grammar.
MEANINGLESS_WORDS: tuple[str, ...] = (
    "zorp", "blick", "quonde", "fesh", "trabble", "myrk", "glimb", "snoof", "plarn", "vesk",
    "drumble", "yalp", "corfin", "wibber", "tarsk", "nubbin", "frell", "gorsh", "pindle", "skaw",
    "mernot", "thrib", "ulmo", "krev", "bazzle", "hoskin", "jubb", "lorrick", "nestle", "opine",
    "prax", "quell", "ruddock", "sarn", "tweel", "umber", "vintle", "whisk", "xandor", "yurt",
    "zephyl", "amble", "brisket", "crumb", "dwindle", "everly", "flinder", "grommet", "hobble",
    "inkle", "jostle", "kestrel", "lumpen", "mottle", "nib", "orrery", "pewter", "quiver",
    "rookery", "sprocket",
)
NOISE_VOCAB: tuple[str, ...] = TRIGGERS + MEANINGLESS_WORDS
NOISE_PROB = 0.5
NOISE_MAX_WORDS = 3
