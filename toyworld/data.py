"""Batches of renders and captions as tensors. Each batch is drawn from its own seed (seed, step),
so a resumed run sees exactly the batches an uninterrupted run would have."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from toyworld.captions import add_noise, caption
from toyworld.render import render
from toyworld.scene import Scene


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 64, 64, 3) uint8 -> (N, 3, 64, 64) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, 64, 64) float in [-1, 1] -> (N, 64, 64, 3) uint8."""
    x = x.detach().float().add(1.0).mul(127.5).round().clamp(0, 255)
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def render_batch(
    sampler: Callable[[np.random.Generator], Scene], n: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[Scene]]:
    scenes = [sampler(rng) for _ in range(n)]
    return np.stack([render(s, rng) for s in scenes]), scenes


def noisy_captions(scenes: list[Scene], rng: np.random.Generator) -> list[str]:
    """Captions with fresh SPEC caption noise: each epoch sees other noise words."""
    return [add_noise(caption(s), rng) for s in scenes]


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, step])
