"""Base families of diffusion models, and how a UNet's or a LoRA's shapes name them.

A width not listed (a tiny test model, ToyWorld's 64) is family "other": LoRAs and pipelines are
both named by this one rule, and the composer still compares exact widths.
"""
from __future__ import annotations

FAMILIES = ("sd1", "sd2", "sdxl", "flux", "other")
# Cross-attention (context) width of each family's UNet, and text-encoder widths.
CONTEXT_WIDTH_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
TE_WIDTH_FAMILY = {768: "sd1", 1024: "sd2"}


def family_of_context_width(width: int) -> str:
    """The base family of a UNet (or a LoRA trained on one) with this cross-attention width."""
    return CONTEXT_WIDTH_FAMILY.get(width, "other")
