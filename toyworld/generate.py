"""Generate ToyWorld images with a loaded StableDiffusionPipeline: DDIM, 25 steps, CFG 2, one
seeded generator per image, so that a (prompt, seed) pair always gives the same image."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

STEPS = 25
# Measured (python -m toyworld.evaluate --cfg G; 100 base prompts, 12 seeds per LoRA): base fully
# right 80% / 82% / 87% at CFG 5 / 3 / 2; kiki LoRA 58% / 100% / 100%, bouba 33% / 58% / 75%.
# Higher guidance over-saturates colours past the detector's tolerance; CFG 1 loses bouba (50%).
GUIDANCE = 2.0


def load_pipeline(path: str) -> StableDiffusionPipeline:
    """Load a saved ToyWorld pipeline for sampling on CPU in float32, with DDIM."""
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, dtype=torch.float32)
    use_ddim(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def use_ddim(pipe: StableDiffusionPipeline) -> None:
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)


@torch.no_grad()
def generate(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    seeds: list[int],
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    batch: int = 16,
) -> np.ndarray:
    """(N, 64, 64, 3) uint8 images, one per (prompt, seed)."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i : i + batch]]
        images = pipe(
            prompt=prompts[i : i + batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="np",
        ).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)
