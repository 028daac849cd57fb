"""Regional composition (ours): every LoRA acts only inside its grounding mask, all of them in ONE
UNet call per guidance half, at the cost of LoRA Merge plus the mask source's few calls.

Inside every LoRA layer each LoRA's low-rank update is multiplied by its mask at that layer's
resolution, and cross-attention is regional (each region reads its own prompt encoding and its
LoRA's key/value update): composer.regional. The masks come from the grounding sources
(composer.grounding), measured on the first steps' latents.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from composer.denoiser import Branch
from composer.grounding.grounder import FixedMasks
from composer.methods.base import Method, MethodContext
from composer.methods.grounded import GroundedMixin
from composer.methods.single import pass_through
from composer.params import GroundingParams
from composer.regional import adapters_disabled, regional_layers


@dataclass
class Regional(GroundedMixin, Method):
    grounding: GroundingParams = field(default_factory=GroundingParams)
    fixed: FixedMasks | None = None
    name = "regional"

    @classmethod
    def from_job(cls, job):
        return cls(job.grounding, job.masks)

    def branches(self, ctx: MethodContext) -> list[Branch]:
        self.ctx = ctx
        grounder = self._ground(ctx)
        # Region 0 is the base model on the whole prompt; region i LoRA i on its own prompt with its
        # text-encoder part. Laid out as the UNet batch: unconditional rows, then conditional.
        regions = [ctx.branch(None, None)]
        regions += [ctx.branch(a.adapter, [a], p) for a, p in zip(ctx.loras, grounder.own_prompts())]
        self.state.encodings = [torch.cat([br.uncond, br.cond]) for br in regions]
        # The call's own encodings (pooled ones for SDXL): every text-encoder part merged.
        return [ctx.branch(None, ctx.loras)]

    def combine(self, eps_u, eps_c, step):
        return pass_through(eps_u, eps_c, step)

    def hooks(self, ctx, denoiser):
        stack = contextlib.ExitStack()
        stack.enter_context(adapters_disabled(denoiser.unet))
        stack.enter_context(regional_layers(denoiser.unet, self.state))
        return stack

    def step_weights(self, ctx, denoiser, steps):
        return self.mask_history()

    def options(self):
        return {"grounding": self.grounding_options()}

    def settings(self):
        return [self.grounding_settings()]
