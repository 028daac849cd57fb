"""Measure a ToyWorld pipeline with the SPEC detector.

  python -m toyworld.evaluate --pipeline toyworld/assets/pipeline --base
  python -m toyworld.evaluate --pipeline ... --dump toyworld/assets/dump --loras kiki,checkerboard
  python -m toyworld.evaluate --vae toyworld/work/vae      # autoencoder reconstructions

Base: 100 base prompts (all 72 one-object prompts, 24 two-object, 4 empty), one seed each;
correct when background, every colour and shape at its slot and the empty slots are right.
LoRA alone: prompts of scenes showing the skill, generated with the LoRA on and with it off.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from toyworld import spec
from toyworld.captions import caption, sample_base_scene, sample_skill_scene, sample_tasks
from toyworld.detect import scene_correct, skill_anywhere, skill_shown, task_succeeds
from toyworld.scene import Scene, SceneObject


def base_scenes(seed: int = 0) -> list[Scene]:
    """Every one-object scene on a solid background (2 backgrounds x 3 slots x 3 shapes x 4
    colours = 72), 36 one-object scenes on the v2 generic patterns (each pattern, slot and colour
    once, shapes in turn), 24 random two-object scenes and one empty scene per background."""
    one = [
        Scene((SceneObject(shape, slot, colour),), bg)
        for bg, slot, shape, colour in itertools.product(spec.BACKGROUNDS, spec.SLOTS, spec.SHAPES, spec.COLOURS)
    ]
    generic = [
        Scene((SceneObject(spec.SHAPES[k % len(spec.SHAPES)], slot, colour),), bg)
        for k, (bg, slot, colour) in enumerate(itertools.product(spec.GENERIC_PATTERNS, spec.SLOTS, spec.COLOURS))
    ]
    rng = np.random.default_rng(seed)
    two = [sample_base_scene(rng, p_empty=0.0, p_two=1.0) for _ in range(24)]
    empty = [Scene((), bg) for bg in spec.BASE_BACKGROUNDS]
    return one + generic + two + empty


def _cfg(guidance: float | None) -> dict:
    return {} if guidance is None else {"guidance": guidance}


def evaluate_base(pipe, seed: int = 1000, guidance: float | None = None) -> dict:
    from toyworld.generate import generate

    scenes = base_scenes()
    images = generate(pipe, [caption(s) for s in scenes], [seed + i for i in range(len(scenes))], **_cfg(guidance))
    rows = [scene_correct(img, s) for img, s in zip(images, scenes)]
    kinds = {"one": [r for r, s in zip(rows, scenes) if len(s.objects) == 1],
             "two": [r for r, s in zip(rows, scenes) if len(s.objects) == 2],
             "empty": [r for r, s in zip(rows, scenes) if not s.objects],
             "solid_background": [r for r, s in zip(rows, scenes) if s.background in spec.BACKGROUNDS],
             "generic_background": [r for r, s in zip(rows, scenes) if s.background in spec.GENERIC_PATTERNS]}
    attrs = {}
    for r in rows:
        for k, v in r.items():
            key = k.split("_")[-1]
            attrs.setdefault(key, []).append(v)
    return {
        "n": len(scenes),
        "accuracy": float(np.mean([r["all"] for r in rows])),
        "by_kind": {k: float(np.mean([r["all"] for r in v])) for k, v in kinds.items()},
        "by_attribute": {k: float(np.mean(v)) for k, v in attrs.items() if k != "all"},
    }, images


def evaluate_lora(pipe, lora_path: Path, skill: str, n: int = 12, seed: int = 2000, guidance: float | None = None) -> dict:
    """Skill detection rate with the LoRA on (weight 1) and off, on prompts that ask for it; and
    with the LoRA on, on base prompts that do not name it ("off-prompt": LoRAtorio assumes a LoRA
    prompted out of its domain behaves like the base model, i.e. a low rate)."""
    from toyworld.generate import generate

    rng = np.random.default_rng(seed)
    scenes = [sample_skill_scene(skill, rng) for _ in range(n)]
    prompts, seeds = [caption(s) for s in scenes], [seed + i for i in range(n)]
    pipe.load_lora_weights(str(lora_path), adapter_name=skill)
    pipe.set_adapters([skill], [1.0])
    on = generate(pipe, prompts, seeds, **_cfg(guidance))
    base = [sample_base_scene(rng, p_empty=0.0) for _ in range(n)]
    off_prompt = generate(pipe, [caption(s) for s in base], seeds, **_cfg(guidance))
    pipe.disable_lora()
    off = generate(pipe, prompts, seeds, **_cfg(guidance))
    pipe.enable_lora()
    pipe.delete_adapters([skill])
    return {
        "skill": skill,
        "n": n,
        "with_lora": float(np.mean([skill_shown(i, s, skill) for i, s in zip(on, scenes)])),
        "without_lora": float(np.mean([skill_shown(i, s, skill) for i, s in zip(off, scenes)])),
        "off_prompt": float(np.mean([skill_anywhere(i, s, skill) for i, s in zip(off_prompt, base)])),
    }, on


@torch.no_grad()
def evaluate_vae(vae, n: int = 40, seed: int = 3000) -> dict:
    """Detection on reconstructions (posterior mean, decoded) of skill scenes and of tasks."""
    from toyworld.data import to_tensor, to_uint8
    from toyworld.render import render

    rng = np.random.default_rng(seed)

    def recon(images: np.ndarray) -> np.ndarray:
        return to_uint8(vae.decode(vae.encode(to_tensor(images)).latent_dist.mean).sample)

    out = {}
    for skill in spec.TRIGGERS:
        scenes = [sample_skill_scene(skill, rng) for _ in range(n)]
        rec = recon(np.stack([render(s, rng) for s in scenes]))
        out[skill] = float(np.mean([skill_shown(i, s, skill) for i, s in zip(rec, scenes)]))
    for name in spec.GENERIC_PATTERNS:
        scenes = [Scene(sample_base_scene(rng).objects, name) for _ in range(n)]
        rec = recon(np.stack([render(s, rng) for s in scenes]))
        out[f"base_{name}"] = float(np.mean([scene_correct(i, s)["all"] for i, s in zip(rec, scenes)]))
    scenes = [sample_base_scene(rng) for _ in range(n)]
    rec = recon(np.stack([render(s, rng) for s in scenes]))
    out["base_scene"] = float(np.mean([scene_correct(i, s)["all"] for i, s in zip(rec, scenes)]))
    tasks = sample_tasks(3, n, rng) + sample_tasks(4, n, rng)
    rec = recon(np.stack([render(t.scene, rng) for t in tasks]))
    out["tasks_n3_n4"] = float(np.mean([task_succeeds(i, t) for i, t in zip(rec, tasks)]))
    return out


def save_grid(images: np.ndarray, path: Path, cols: int = 10) -> None:
    from PIL import Image

    rows = -(-len(images) // cols)
    grid = np.full((rows * 64, cols * 64, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] = img
    Image.fromarray(grid).save(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m toyworld.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", type=Path)
    p.add_argument("--vae", type=Path)
    p.add_argument("--dump", type=Path)
    p.add_argument("--base", action="store_true")
    p.add_argument("--loras", default="", help="comma-separated skills, or `all`")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: toyworld.generate.GUIDANCE)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grids", type=Path, help="folder for image grids")
    p.add_argument("--markdown", type=Path, help="also write the results as a Markdown table here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    results: dict = {}
    t0 = time.time()
    if args.vae:
        from diffusers import AutoencoderKL

        results["vae"] = evaluate_vae(AutoencoderKL.from_pretrained(str(args.vae)).eval())
    if args.pipeline and (args.base or args.loras):
        from toyworld.generate import load_pipeline

        pipe = load_pipeline(str(args.pipeline))
        if args.grids:
            args.grids.mkdir(parents=True, exist_ok=True)
        if args.base:
            results["base"], images = evaluate_base(pipe, guidance=args.cfg)
            if args.grids:
                save_grid(images, args.grids / "base.png")
        skills = list(spec.TRIGGERS) if args.loras == "all" else [s for s in args.loras.split(",") if s]
        for skill in skills:
            path = args.dump / f"toyworld_{skill}.safetensors"
            results.setdefault("loras", {})[skill], images = evaluate_lora(pipe, path, skill, args.n, guidance=args.cfg)
            if args.grids:
                save_grid(images, args.grids / f"lora_{skill}.png", cols=12)
    results["seconds"] = round(time.time() - t0, 1)
    from toyworld.generate import GUIDANCE

    results["cfg"] = args.cfg if args.cfg is not None else GUIDANCE
    print(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(results, " ".join(argv if argv is not None else os.sys.argv[1:])))


def markdown(results: dict, command: str) -> str:
    """The quality bars of the ToyWorld issue as a table: base >= 80%; each LoRA >= 80% on, <= 5% off."""
    lines = ["# ToyWorld models against their quality bars", "", f"`python -m toyworld.evaluate {command}`"
             f" ({results['seconds'] / 60:.1f} min). DDIM 25 steps, CFG {results.get('cfg')}; SPEC detector.", ""]
    if "base" in results:
        b = results["base"]
        lines += ["| base model | prompts | fully right | one object | two objects | empty | bar |",
                  "|---|---|---|---|---|---|---|",
                  f"| EMA UNet + text encoder | {b['n']} | **{b['accuracy']:.0%}** | {b['by_kind']['one']:.0%} | "
                  f"{b['by_kind']['two']:.0%} | {b['by_kind']['empty']:.0%} | >= 80%: "
                  f"{'met' if b['accuracy'] >= 0.8 else 'NOT met'} |", "",
                  f"Solid backgrounds {b['by_kind']['solid_background']:.0%}, generic patterns (SPEC v2) "
                  f"{b['by_kind']['generic_background']:.0%}.", "",
                  "By attribute: " + ", ".join(f"{k} {v:.0%}" for k, v in b["by_attribute"].items()), ""]
    if "loras" in results:
        lines += ["| LoRA | seeds | skill shown, LoRA on | LoRA off | bar (>= 80% on, <= 5% off) | "
                  "LoRA on, prompt without its skill |", "|---|---|---|---|---|---|"]
        for skill, r in results["loras"].items():
            met = r["with_lora"] >= 0.8 and r["without_lora"] <= 0.05
            lines.append(f"| {skill} | {r['n']} | {r['with_lora']:.0%} | {r['without_lora']:.0%} | "
                         f"{'met' if met else 'NOT met'} | {r.get('off_prompt', float('nan')):.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
