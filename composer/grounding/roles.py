"""What kind of thing a LoRA adds, from its Civitai category (tags), and so where it may act.

* ``object``: a character, creature or thing: competes with the other objects for object regions;
* ``background``: takes what no object claims;
* ``style``: acts everywhere;
* ``attribute``: clothing, accessories, poses: acts on and around the object it qualifies;
* ``concept``: anything else: acts where its own mask says.

Civitai puts a model's category among its tags (usually first); the first tag that names a role
decides. Without one the role is ``concept``.
"""
from __future__ import annotations

ROLES = ("object", "background", "style", "attribute", "concept")

_TAGS = {
    "object": {"character", "characters", "celebrity", "person", "people", "animal", "animals", "creature",
               "creatures", "monster", "object", "objects", "vehicle", "vehicles", "food", "robot", "mecha"},
    "background": {"background", "backgrounds", "scenery", "landscape", "landscapes", "building", "buildings",
                   "architecture", "environment", "environments", "location", "city", "interior"},
    "style": {"style", "styles", "art style", "artstyle", "artist", "art", "photography", "aesthetic", "filter"},
    "attribute": {"clothing", "clothes", "outfit", "outfits", "costume", "accessory", "accessories", "hair",
                  "hairstyle", "pose", "poses", "armor", "jewelry", "tattoo", "effect", "effects"},
}


def role_of(tags: tuple[str, ...] | list[str]) -> str:
    """The role named by the first tag that names one; ``concept`` otherwise."""
    for tag in tags:
        t = tag.strip().lower()
        for role, names in _TAGS.items():
            if t in names:
                return role
    return "concept"
