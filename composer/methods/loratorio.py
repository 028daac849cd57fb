"""LoRAtorio (arXiv:2508.11624): the base model in branch 0, each LoRA in its own branch; per patch,
a SoftMin over the LoRAs' cosine similarity to the base, re-centred guidance, dynamic top-k.
The maths is :mod:`composer.math`; the parameters are :class:`composer.params.LoratorioParams`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from composer import math as cm
from composer.denoiser import BASE, Branch, Combined
from composer.methods.base import Method, MethodContext, first_image
from composer.params import LoratorioParams


def loratorio_combine(params: LoratorioParams, eps_u: torch.Tensor | None, eps_c: torch.Tensor,
                      prior: torch.Tensor | None = None) -> Combined:
    """One LoRAtorio step. ``eps_c``: base then the N LoRAs. ``eps_u``: the same, or the base
    alone (then lambda must be 1: guidance from the base's unconditional prediction, as the probe
    runs it), or None without CFG. ``prior``: ``(N, B, H, W)`` masks that multiply the SoftMin
    weights (``composer.math.spatial_prior``). ``extras["similarity"]``: the patch similarities
    ``(N, B, Hp, Wp)``."""
    if eps_c.shape[0] < 2:
        raise ValueError("LoRAtorio needs the base branch and at least one LoRA branch")
    p = params
    sim = cm.patch_cosine_similarity(eps_c[1:], eps_c[0], p.p)
    omega = cm.softmin_weights(sim, p.tau, cm.topk_divergence_mask(sim, p.k))
    if prior is not None:
        omega = cm.spatial_prior(omega, prior, p.p)
    pix = cm.patch_weights_to_pixels(omega, p.p, *eps_c.shape[-2:]).to(eps_c.dtype)
    cond = cm.weighted_sum(eps_c[1:], pix)
    if eps_u is None:
        uncond = None
    elif eps_u.shape[0] == 1:
        if p.lam != 1.0:
            raise ValueError("with the base's unconditional prediction alone, lambda must be 1")
        uncond = eps_u[0]
    else:
        uncond = cm.recentred_uncond(eps_u[0], eps_u[1:], pix, p.lam)
    return Combined(uncond, cond, omega, {"similarity": sim})


@dataclass
class Loratorio(Method):
    params: LoratorioParams = field(default_factory=LoratorioParams)
    name = "loratorio"

    @classmethod
    def from_job(cls, job):
        return cls(job.params)

    def branches(self, ctx: MethodContext) -> list[Branch]:
        return [ctx.branch(BASE, None)] + [ctx.branch(a.adapter, [a]) for a in ctx.loras]

    @property
    def uncond_branches(self) -> int | None:  # type: ignore[override]
        """With lambda = 1 the guidance is the base's unconditional prediction alone: the LoRAs'
        are not computed (N samples a step fewer)."""
        return 1 if self.params.lam == 1.0 else None

    def combine(self, eps_u, eps_c, step):
        return loratorio_combine(self.params, eps_u, eps_c)

    def step_weights(self, ctx, denoiser, steps):
        return first_image(denoiser.weights)

    def options(self):
        return {"loratorio": asdict(self.params)}

    def settings(self):
        p = self.params
        return [f'LoRAtorio: "p={p.p}, tau={p.tau:g}, lambda={p.lam:g}, k={p.k}"']
