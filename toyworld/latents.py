"""Cache of autoencoder latents for a fixed set of renders (encoding is the slow part of a batch).

The cache keeps each latent's posterior mean and std, so training still samples the posterior,
and the clean caption of each image, so that caption noise is drawn fresh at every step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from toyworld import checkpoint
from toyworld.captions import caption
from toyworld.data import render_batch, step_rng, to_tensor
from toyworld.scene import Scene


@torch.no_grad()
def build_cache(
    vae: AutoencoderKL,
    sampler: Callable[[np.random.Generator], Scene],
    n: int,
    seed: int,
    stream: int,
    chunk: int = 128,
) -> dict:
    means, stds, caps = [], [], []
    for i in range(0, n, chunk):
        images, scenes = render_batch(sampler, min(chunk, n - i), step_rng(seed, i, stream))
        post = vae.encode(to_tensor(images)).latent_dist
        means.append(post.mean.half())
        stds.append(post.std.half())
        caps += [caption(s) for s in scenes]
    return {"mean": torch.cat(means), "std": torch.cat(stds), "captions": caps}


def cached(
    path: Path,
    vae: AutoencoderKL,
    sampler: Callable[[np.random.Generator], Scene],
    n: int,
    seed: int,
    stream: int,
) -> dict:
    """Load the cache at `path`, or build and save it."""
    cache = checkpoint.load(path)
    if cache is None or len(cache["captions"]) != n:
        cache = build_cache(vae, sampler, n, seed, stream)
        checkpoint.save(cache, path)
    return cache


def sample_latents(cache: dict, idx: np.ndarray, scale: float, gen: torch.Generator) -> torch.Tensor:
    """Scaled posterior samples for the cached images `idx`."""
    mean = cache["mean"][idx].float()
    std = cache["std"][idx].float()
    return (mean + std * torch.randn(mean.shape, generator=gen)) * scale
