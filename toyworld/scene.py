"""A scene description: what an image shows, independent of pixels and words."""

from __future__ import annotations

from dataclasses import dataclass, field

from toyworld import spec


@dataclass(frozen=True)
class SceneObject:
    """One object: a base shape with a colour, or an object skill (colour fixed, `colour` None)."""

    kind: str  # a base shape ("circle", ...) or an object skill ("kiki", ...)
    slot: str  # "left" | "center" | "right"
    colour: str | None = None

    def __post_init__(self) -> None:
        if self.kind in spec.OBJECT_SKILLS:
            if self.colour is not None:
                raise ValueError(f"object skill {self.kind!r} has a fixed colour")
        elif self.kind in spec.SHAPES:
            if self.colour not in spec.COLOURS:
                raise ValueError(f"shape {self.kind!r} needs a colour, got {self.colour!r}")
        else:
            raise ValueError(f"unknown object kind {self.kind!r}")
        if self.slot not in spec.SLOTS:
            raise ValueError(f"unknown slot {self.slot!r}")

    @property
    def rgb(self) -> spec.RGB:
        if self.kind in spec.OBJECT_COLOURS:
            return spec.OBJECT_COLOURS[self.kind]
        return spec.COLOURS[self.colour]  # type: ignore[index]


@dataclass(frozen=True)
class Scene:
    """Background, 0-2 objects (two objects sit left and right), and the two global skills."""

    objects: tuple[SceneObject, ...] = field(default_factory=tuple)
    background: str = "light"  # spec.BASE_BACKGROUNDS (solid or generic pattern) | a background skill
    halo: bool = False
    framed: bool = False

    def __post_init__(self) -> None:
        if self.background not in spec.BASE_BACKGROUNDS and self.background not in spec.BACKGROUND_SKILLS:
            raise ValueError(f"unknown background {self.background!r}")
        if len(self.objects) > 2:
            raise ValueError("at most two objects")
        if len(self.objects) == 2 and tuple(o.slot for o in self.objects) != spec.TWO_OBJECT_SLOTS:
            raise ValueError("two objects sit left then right")
        if self.halo and not self.objects:
            raise ValueError("halo needs an object")

    @property
    def skills(self) -> frozenset[str]:
        """The skills this scene shows."""
        found = {o.kind for o in self.objects if o.kind in spec.OBJECT_SKILLS}
        if self.background in spec.BACKGROUND_SKILLS:
            found.add(self.background)
        if self.halo:
            found.add("halo")
        if self.framed:
            found.add("framed")
        return frozenset(found)
