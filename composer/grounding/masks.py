"""Grounding masks as small pure tensor functions (torch only).

Shapes: a stack of N maps over B images is ``(N, B, H, W)`` at latent resolution; values in [0, 1].

* :func:`contrast_saliency` - where two noise predictions differ (DiffEdit, Couairon et al. 2022,
  arXiv:2210.11427, takes a mask from the difference of predictions under two prompts);
* :func:`phrase_attention` - the share of a pixel's cross-attention that goes to a phrase's tokens,
  renormalised over the prompt's content tokens so that an attention sink (the start token, the
  padding end tokens) does not dominate (FreeFuse, arXiv:2510.23515, and CLoRA, arXiv:2403.19776,
  derive LoRA masks from cross-attention to a LoRA's words);
* :func:`region` - a saliency map to a soft region (normalised, smoothed, soft threshold);
* :func:`route` - regions by role: objects compete, a background takes what no object claims, a
  style acts everywhere, an attribute on and around its object;
* :func:`at_resolution` - a latent-resolution mask resized to a layer's feature map or tokens.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["contrast_saliency", "phrase_attention", "normalise_max", "gaussian_blur", "soft_threshold", "region",
           "dilate", "route", "at_resolution", "token_grid"]


def contrast_saliency(eps_a: torch.Tensor, eps_b: torch.Tensor) -> torch.Tensor:
    """``|eps_a - eps_b|`` over channels (L2): ``(..., C, H, W)`` -> ``(..., H, W)``."""
    if eps_a.shape != eps_b.shape:
        raise ValueError(f"predictions of different shapes {tuple(eps_a.shape)} and {tuple(eps_b.shape)}")
    return (eps_a.float() - eps_b.float()).square().sum(dim=-3).sqrt()


def phrase_attention(probs: torch.Tensor, token_sets: list[list[int]], content: list[int]) -> torch.Tensor:
    """Per pixel, the share of cross-attention on each LoRA's phrase tokens among the content tokens.

    Args:
        probs: ``(B, heads, T, L)`` attention probabilities of T pixels over L text tokens.
        token_sets: for each of N LoRAs, the positions of its phrase's tokens.
        content: the positions of the prompt's content tokens (no start, end or padding token).

    Returns:
        ``(N, B, T)`` shares in [0, 1]. A LoRA with no tokens gets zeros.
    """
    if probs.ndim != 4:
        raise ValueError(f"expected attention probabilities (B, heads, T, L), got {tuple(probs.shape)}")
    p = probs.float().mean(dim=1)  # (B, T, L)
    total = p[..., content].sum(-1).clamp_min(1e-12) if content else torch.ones(p.shape[:2])
    out = [p[..., ids].sum(-1) / total if ids else torch.zeros(p.shape[:2]) for ids in token_sets]
    return torch.stack(out)


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) of a layer whose ``tokens`` pixels come from an ``height x width`` latent by
    stride-2 downsampling (each halving rounds up, as a padded stride-2 convolution does)."""
    h, w = height, width
    while h * w > tokens and h > 1:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != tokens:
        raise ValueError(f"{tokens} tokens are no downsampling of a {height}x{width} latent")
    return h, w


def normalise_max(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each map divided by its own maximum: ``(..., H, W)`` in [0, 1] for non-negative input."""
    top = x.amax(dim=(-2, -1), keepdim=True)
    return x / top.clamp_min(eps)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur over the last two dims (reflect-padded); sigma in pixels, 0: none."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(2 * sigma)))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-2:])
    pad_h, pad_w = min(r, shape[-2] - 1), min(r, shape[-1] - 1)
    y = F.pad(y, (pad_w, pad_w, pad_h, pad_h), mode="reflect") if pad_h and pad_w else y
    kh = k[r - pad_h: r + pad_h + 1].view(1, 1, -1, 1)
    kw = k[r - pad_w: r + pad_w + 1].view(1, 1, 1, -1)
    y = F.conv2d(F.conv2d(y, kh), kw)
    return y.reshape(shape)


def soft_threshold(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """0 below ``lo``, 1 above ``hi``, a smoothstep between."""
    if not hi > lo:
        raise ValueError(f"need lo < hi, got {lo}, {hi}")
    t = ((x - lo) / (hi - lo)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def region(saliency: torch.Tensor, sigma: float = 1.0, lo: float = 0.25, hi: float = 0.55) -> torch.Tensor:
    """A saliency map to a soft region: smoothed, divided by its maximum, soft-thresholded."""
    return soft_threshold(normalise_max(gaussian_blur(saliency, sigma)), lo, hi)


def dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation (max over a square of side 2r + 1) over the last two dims."""
    if radius <= 0:
        return x
    shape = x.shape
    y = F.max_pool2d(x.reshape(-1, 1, *shape[-2:]), 2 * radius + 1, stride=1, padding=radius)
    return y.reshape(shape)


def route(regions: torch.Tensor, roles: list[str], owners: list[int | None], sharpness: float = 8.0,
          attribute_radius: int = 2, elsewhere: Sequence[int] = ()) -> torch.Tensor:
    """Masks from each LoRA's own region and its role.

    Args:
        regions: ``(N, B, H, W)`` each LoRA's own soft region in [0, 1].
        roles: per LoRA, one of ``composer.grounding.roles.ROLES``.
        owners: per LoRA, the index of the LoRA it qualifies (for attributes: the object of the
            same unit of the prompt), or None.
        sharpness: how hard overlapping objects split a pixel (the power of the normalised shares).
        attribute_radius: how far (latent pixels) an attribute reaches beyond its object.
        elsewhere: LoRAs drawn elsewhere (fusion's riders, in their object's own trajectory): 0
            here, and they claim nothing from a background.

    Returns:
        ``(N, B, H, W)`` masks: an object keeps its region where it out-weighs the other objects;
        a style is 1 everywhere; an attribute is its object's mask dilated (its own region when it
        qualifies no object LoRA); a background is 1 minus what objects and attributes claim; a
        concept keeps its region.
    """
    if regions.ndim != 4 or len(roles) != regions.shape[0] or len(owners) != regions.shape[0]:
        raise ValueError(f"regions {tuple(regions.shape)} do not match {len(roles)} roles and {len(owners)} owners")
    out = regions.clone().float()
    obj = [i for i, r in enumerate(roles) if r == "object"]
    if obj:
        share = regions[obj].float().pow(sharpness)
        out[obj] = regions[obj].float() * share / share.sum(0, keepdim=True).clamp_min(1e-30)
    for i, role in enumerate(roles):
        if role == "style":
            out[i] = 1.0
        elif role == "attribute":
            base = out[owners[i]] if owners[i] is not None else regions[i].float()
            out[i] = dilate(base, attribute_radius)
    for i in elsewhere:
        out[i] = 0.0
    claimed = [i for i, r in enumerate(roles) if r in ("object", "attribute") and i not in elsewhere]
    for i, role in enumerate(roles):
        if role == "background":
            out[i] = 1.0 - out[claimed].amax(0) if claimed else 1.0
    return out.clamp(0, 1)


def at_resolution(masks: torch.Tensor, height: int, width: int, pool: str = "area") -> torch.Tensor:
    """``(..., H, W)`` masks at a layer's ``height x width``: down by averaging each cell (``area``)
    or by its maximum (``max``: a LoRA acts fully on every coarse cell its region touches), up bilinear."""
    if masks.shape[-2:] == (height, width):
        return masks
    shape = masks.shape
    flat = masks.reshape(-1, 1, *shape[-2:]).float()
    if height <= shape[-2] and width <= shape[-1]:
        y = F.adaptive_max_pool2d(flat, (height, width)) if pool == "max" else F.adaptive_avg_pool2d(flat, (height, width))
    else:
        y = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    return y.reshape(*shape[:-2], height, width).to(masks.dtype)
