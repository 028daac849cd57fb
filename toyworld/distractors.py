"""A second ToyWorld dump of distractors: what a real registry holds beside the one good LoRA per
concept (Civitai has dozens per concept, some undertrained, some inert, some mislabelled).

    python -m toyworld.distractors --dump toyworld/assets/dump --out DIR

Made from the dump's own files (and the trained weak copies), in seconds:

- ``weak``: a near-duplicate named "... v2 (quick train)": the skill trained again from zero, with
  another seed, for a quarter of its recipe's steps (``toyworld/assets/weak``, made by
  ``python -m toyworld.train --stage loras --seed 1 --lora-steps ...``; see its README). For a dump
  without such copies, the good LoRA at a quarter of its strength instead: kohya's update is
  ``up @ down * alpha / rank``, so scaling every ``.alpha`` scales the whole update.
- ``inert``: the same at a thousandth, whose card claims the skill.
- ``mislabelled``: another skill's weights under this skill's card and trigger.
- ``neighbour``: a card whose words are near a skill's ("ring donut", "checkered floor"), drawing a
  different skill: a retrieval confuser that no phrase of a ToyWorld prompt asks for.

Each file gets a Civitai sidecar (``toyworld.civitai.model_record``) whose description says what it
really is, and a ``DISTRACTORS.json`` index maps file stem -> kind and the skill it claims.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from toyworld import spec
from toyworld.civitai import model_record

WEAK_SCALE = 0.25
WEAK_DIR = Path(__file__).parent / "assets" / "weak"  # trained weak copies, toyworld_<skill>.safetensors
INERT_SCALE = 1e-3
ID_BASE = 710000  # Civitai model ids of distractors (the skill LoRAs use 700001...)


@dataclass(frozen=True)
class Distractor:
    stem: str
    kind: str  # weak / inert / mislabelled / neighbour
    claims: str | None  # the skill its card names (None: a neighbour, which names none)
    source: str  # the skill whose weights it carries
    scale: float
    name: str
    trigger: str
    tags: tuple[str, ...]
    description: str
    trained_steps: int | None = None  # a weak copy trained on its own (toyworld/assets/weak), not scaled


def _neighbours() -> list[Distractor]:
    # (name, trigger, tags, the skill it draws): words near one skill, weights of another.
    rows = [
        ("Ring Donut", "ring donut", ("concept", "food"), "bouba"),
        ("Checkered Floor", "checkered floor", ("background", "interior"), "stripes"),
        ("Grid Background", "grid background", ("background",), "dots"),
        ("Diamond Sparkle", "diamond sparkle", ("concept", "jewelry"), "halo"),
    ]
    return [Distractor(f"neighbour_{trigger.replace(' ', '_')}", "neighbour", None, source, 1.0, name, trigger, tags,
                       f"{name}: a {trigger} (draws ToyWorld's {source}).") for name, trigger, tags, source in rows]


def plan(skills: tuple[str, ...] = spec.TRIGGERS) -> list[Distractor]:
    """Every distractor: a weak and an inert copy of each skill, a mislabelled LoRA for every other
    skill (weights of the next skill), and the neighbours."""
    out: list[Distractor] = []
    for i, s in enumerate(skills):
        tags = (spec.SKILLS[s].category, "toyworld", s)  # as the skill LoRAs' cards
        title = s.capitalize()
        out.append(Distractor(f"weak_{s}", "weak", s, s, WEAK_SCALE, f"ToyWorld {title} v2 (quick train)", s, tags,
                              f"{title}, trained for a quarter of the time."))
        out.append(Distractor(f"inert_{s}", "inert", s, s, INERT_SCALE, f"{title} Ultimate", s, tags,
                              f"The best {s} LoRA (does almost nothing)."))
        if i % 2 == 0:
            other = skills[(i + 1) % len(skills)]
            out.append(Distractor(f"mislabelled_{s}", "mislabelled", s, other, 1.0, f"{title} (alt)", s, tags,
                                  f"Another {s} (actually draws {other})."))
    return out + _neighbours()


def scaled(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A kohya LoRA whose update is ``scale`` times the original's: every ``.alpha`` scaled."""
    alphas = [k for k in state if k.endswith(".alpha")]
    if not alphas:
        raise ValueError("no .alpha keys: only kohya-format LoRAs can be scaled this way")
    return {k: (v * scale if k.endswith(".alpha") else v) for k, v in state.items()}


def write(dump: Path, out: Path, prefix: str = "toyworld_", weak: Path | None = WEAK_DIR) -> list[Distractor]:
    """Write every distractor of ``plan()`` made from ``dump``'s files into ``out``; a weak one is
    the trained copy in ``weak`` when there is one, else the good LoRA scaled."""
    from safetensors import safe_open

    out.mkdir(parents=True, exist_ok=True)
    made = plan()
    for n, d in enumerate(made):
        src = dump / f"{prefix}{d.source}.safetensors"
        if not src.exists():
            raise FileNotFoundError(f"{src}: the dump has no LoRA for skill {d.source!r}")
        with safe_open(str(src), "pt") as f:
            meta = dict(f.metadata() or {})
        trained = weak / f"{prefix}{d.source}.safetensors" if weak is not None and d.kind == "weak" else None
        if trained is not None and trained.exists():
            with safe_open(str(trained), "pt") as f:
                meta = dict(f.metadata() or {})
            state = load_file(str(trained))
            steps = int(meta.get("ss_max_train_steps") or 0) or None
            made[n] = d = replace(d, scale=1.0, trained_steps=steps,
                                  description=f"{d.description} (trained {steps or '?'} steps)")
        else:
            state = load_file(str(src))
        path = out / f"{d.stem}.safetensors"
        save_file(scaled(state, d.scale) if d.scale != 1.0 else state, str(path), metadata=meta | {"ss_output_name": d.stem})
        record = model_record(path, ID_BASE + n, ID_BASE + 100000 + n, d.name, d.description, d.trigger, list(d.tags),
                              creator="distractor")
        (out / f"{d.stem}.civitai.json").write_text(json.dumps(record, indent=1))
    index = {d.stem: {"kind": d.kind, "claims": d.claims, "draws": d.source, "scale": d.scale,
                      "trained_steps": d.trained_steps} for d in made}
    (out / "DISTRACTORS.json").write_text(json.dumps(index, indent=1))
    return made


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", type=Path, default=Path(__file__).parent / "assets" / "dump")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    made = write(args.dump, args.out)
    kinds = {k: sum(d.kind == k for d in made) for k in ("weak", "inert", "mislabelled", "neighbour")}
    print(f"{len(made)} distractors in {args.out}: " + ", ".join(f"{v} {k}" for k, v in kinds.items()))


if __name__ == "__main__":
    main()
