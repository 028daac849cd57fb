"""One branch per step: the base model alone, or every LoRA merged into it (LoRA Merge)."""
from __future__ import annotations

import torch

from composer.denoiser import BASE, Branch, Combined
from composer.methods.base import Method, MethodContext


def pass_through(eps_u: torch.Tensor | None, eps_c: torch.Tensor, step: int) -> Combined:
    """The combine rule of a single branch: its predictions as they are."""
    return Combined(None if eps_u is None else eps_u[0], eps_c[0])


class Base(Method):
    """The base model, no LoRA (the LoRAs of the job are ignored)."""

    name = "base"
    needs_loras = False

    def branches(self, ctx: MethodContext) -> list[Branch]:
        # With adapters installed on the pipeline (a warm cache), the base runs as PEFT's "no adapter".
        return [ctx.branch(BASE if ctx.has_adapters else None, None)]

    def combine(self, eps_u, eps_c, step):
        return pass_through(eps_u, eps_c, step)


class Merge(Method):
    """Every LoRA active at its weight in one branch (diffusers' ``set_adapters``)."""

    name = "merge"

    def branches(self, ctx: MethodContext) -> list[Branch]:
        return [ctx.branch(None, ctx.loras)]

    def combine(self, eps_u, eps_c, step):
        return pass_through(eps_u, eps_c, step)

    def step_weights(self, ctx, denoiser, steps):
        n = len(ctx.loras)
        return [torch.tensor([a.weight for a in ctx.loras]).reshape(n, 1, 1) for _ in range(steps)]
