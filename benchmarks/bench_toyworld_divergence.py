"""Why LoRAtorio loses objects on ToyWorld: how far each LoRA's conditional prediction is from
the base model's, inside the object's slot box and outside it, step by step, and the weight the
SoftMin gives each LoRA there.

    .venv/bin/python benchmarks/bench_toyworld_divergence.py [--seeds 3]

For object + background (and object + effect) pairs, a LoRAtorio composition with the current
defaults is run and, at every step, each LoRA's divergence from the base (1 - patch cosine, the
quantity LoRAtorio's SoftMin ranks) and its mean weight are averaged over the latent patches inside
the object's 25 x 25 slot box and over the rest. Writes benchmarks/results/toyworld_divergence.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
PAIRS = (("kiki", "stripes"), ("mimi", "checkerboard"), ("bouba", "dots"), ("kiki", "framed"))
STEPS = (0, 4, 8, 12, 16, 20, 24)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "toyworld_divergence.md")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from composer import Composer, Job, LoratorioParams
    from loraregistry.builtin import BUILTIN_CFG, BUILTIN_STEPS, builtin_dump_dir, builtin_pipeline_dir
    from loraregistry.cli.compose import _quiet_libraries
    from toyworld import spec
    from toyworld.detect import slot_box

    _quiet_libraries()
    composer = Composer.from_pretrained(str(builtin_pipeline_dir()), device="cpu", cache_bytes=None)
    params = LoratorioParams()
    record: list[tuple[torch.Tensor, torch.Tensor]] = []

    def observe(step: dict) -> None:  # the composer's per-step callback: divergence and weights, image 0
        record.append(((1 - step["similarity"])[:, 0], step["weights"][:, 0]))

    dump = builtin_dump_dir()
    scale = spec.SIZE // 16 * params.p  # image pixels per patch side
    lines = ["# Where each LoRA diverges from the base on ToyWorld", "",
             f"`python benchmarks/bench_toyworld_divergence.py --seeds {args.seeds}`: LoRAtorio p={params.p}, "
             f"tau={params.tau}, lambda={params.lam}; DDIM {BUILTIN_STEPS} steps, CFG "
             f"{BUILTIN_CFG}. Per step: each LoRA's mean divergence from the base (1 - patch cosine) inside "
             "the object's slot box | outside it, and its mean SoftMin weight inside the box (the object "
             "LoRA should win there).", "",
             "| pair | LoRA | " + " | ".join(f"step {s}" for s in STEPS) + " | weight in box, mean |",
             "|---|---|" + "---|" * (len(STEPS) + 1)]
    for obj, other in PAIRS:
        bg = "light" if other in spec.BACKGROUND_SKILLS else "dark"
        prompt = (f"a {obj} on the left, {other} background" if other in spec.BACKGROUND_SKILLS
                  else f"a {obj} on the left, {bg} background, {other}")
        box = torch.from_numpy(slot_box("left")[scale // 2 :: scale, scale // 2 :: scale].copy())  # patch centres
        per = {s: [] for s in (obj, other)}
        for seed in range(args.seeds):
            record.clear()
            composer.run(Job(prompt, loras=[str(dump / f"toyworld_{s}.safetensors") for s in (obj, other)],
                             method="loratorio", seed=seed, steps=BUILTIN_STEPS, cfg=BUILTIN_CFG, params=params),
                         callback=observe)
            for i, s in enumerate((obj, other)):
                per[s].append([(float(d[i][box].mean()), float(d[i][~box].mean()), float(w[i][box].mean()))
                               for d, w in record])
        for s in (obj, other):
            a = np.array(per[s]).mean(0)  # (steps, 3)
            cells = [f"{a[t, 0]:.3f} \\| {a[t, 1]:.3f}" for t in STEPS]
            lines.append(f"| {obj} + {other} | {s} | " + " | ".join(cells) + f" | {a[:, 2].mean():.2f} |")
        print(lines[-2] + "\n" + lines[-1], flush=True)
    report = "\n".join(lines) + "\n"
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
