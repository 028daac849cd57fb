"""LoRA Composite (Zhong et al. 2024, arXiv:2402.16843): every LoRA in its own branch, the guided
predictions averaged."""
from __future__ import annotations

import torch

from composer.denoiser import Branch, Combined
from composer.methods.base import Method, MethodContext, first_image


def mean_of_branches(eps_u: torch.Tensor | None, eps_c: torch.Tensor, step: int) -> Combined:
    """CFG is linear, so averaging the guided predictions equals guiding the averaged branches."""
    n = eps_c.shape[0]
    w = torch.full((n, eps_c.shape[1], 1, 1), 1.0 / n)
    return Combined(None if eps_u is None else eps_u.mean(0), eps_c.mean(0), w)


class Composite(Method):
    name = "composite"

    def branches(self, ctx: MethodContext) -> list[Branch]:
        return [ctx.branch(a.adapter, [a]) for a in ctx.loras]

    def combine(self, eps_u, eps_c, step):
        return mean_of_branches(eps_u, eps_c, step)

    def step_weights(self, ctx, denoiser, steps):
        return first_image(denoiser.weights)
