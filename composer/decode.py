"""Latents to pixels outside the pipeline's own call, as the pipeline itself decodes them.

Written by hand because diffusers keeps this inside each pipeline's ``__call__`` (SDXL's float16 VAE
upcast and its optional latents mean and std included); a method that pastes an image of its own into
the pipeline's output (``composer.methods.fusion``) needs the same decode for its own latents.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` images in [0, 1] (float32, CPU) from ``(B, C, h, w)`` latents of ``pipe``."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        z = latents.to(device=vae.device, dtype=vae.dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            z = z * torch.tensor(std).view(shape).to(z) / vae.config.scaling_factor + torch.tensor(mean).view(shape).to(z)
        else:
            z = z / vae.config.scaling_factor
        image = vae.decode(z, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(torch.float16)
    return (image.float().cpu() / 2 + 0.5).clamp(0, 1)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """``(1, 3, H, W)`` in [0, 1] from an RGB PIL image."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def to_pil(image: torch.Tensor) -> Image.Image:
    """The first image of ``(B, 3, H, W)`` in [0, 1], rounded as diffusers' ``numpy_to_pil`` does."""
    return Image.fromarray((image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
