"""A strip of one prompt and seed under several methods, each image labelled with what the
ToyWorld detector finds in it: what the demo shows a newcomer, with no picked seed."""
from __future__ import annotations

from typing import Any

import numpy as np


def detector_label(image: Any, prompt: str) -> str:
    """``kiki yes, checkerboard no, +mimi`` for a ToyWorld caption (each named skill found or not, and
    any object skill drawn unasked); empty for a prompt outside ToyWorld's grammar."""
    from toyworld import spec
    from toyworld.captions import parse_caption
    from toyworld.detect import object_skill_at, skill_shown

    scene = parse_caption(prompt)
    if scene is None:
        return ""
    img = np.asarray(image.convert("RGB"))
    bits = [f"{s} {'yes' if skill_shown(img, scene, s) else 'no'}" for s in sorted(scene.skills)]
    extra = [s for s in spec.OBJECT_SKILLS if s not in scene.skills and any(object_skill_at(img, s, slot) for slot in spec.SLOTS)]
    return ", ".join(bits + [f"+{s}" for s in extra])


def method_strip(results: list[tuple[str, Any]], prompt: str, scale: int = 4):
    """A PIL image: each (method, result) upscaled, with the method and the detector's label under it;
    its ``parameters`` text chunk holds the prompt and each tile's generation parameters."""
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    tiles = [(m, r.image.convert("RGB").resize((r.image.width * scale, r.image.height * scale), Image.NEAREST),
              detector_label(r.image, prompt)) for m, r in results]
    # A method that picks another per job (by-role) is shown with its pick.
    shown = [f"{m}: {chosen}" if (chosen := (getattr(r, "report", None) or {}).get("options", {}).get("chosen")) else m
             for m, r in results]
    w, h = tiles[0][1].size
    pad, text_h = 6, 30
    strip = Image.new("RGB", (len(tiles) * (w + pad) + pad, h + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(strip)
    for k, (_method, tile, label) in enumerate(tiles):
        x = pad + k * (w + pad)
        strip.paste(tile, (x, pad))
        draw.text((x, pad + h + 3), shown[k], fill="black")
        draw.text((x, pad + h + 16), label, fill=(40, 120, 40) if label and " no" not in label and "+" not in label
                  else (180, 30, 30))
    info = PngInfo()
    info.add_text("parameters", "\n\n".join(f"[{m}] {r.parameters}" for m, r in results))
    info.add_text("labels", "; ".join(f"{m}: {label}" for m, _, label in tiles))
    return strip, info
