"""LoRA Switch (Zhong et al. 2024, "Multi-LoRA Composition for Image Generation", arXiv:2402.16843):
one LoRA active at a time, rotating every ``switch_every`` steps."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from composer.callbacks import SwitchLoras
from composer.denoiser import Branch
from composer.methods.base import Method, MethodContext
from composer.methods.single import pass_through


@dataclass
class Switch(Method):
    every: int = 1
    name = "switch"

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"switch interval must be >= 1, got {self.every}")
        self._switch: SwitchLoras | None = None

    @classmethod
    def from_job(cls, job):
        return cls(job.switch_every)

    def branches(self, ctx: MethodContext) -> list[Branch]:
        # Adapter None: the UNet runs whichever adapter the callback activated.
        return [ctx.branch(None, [a]) for a in ctx.loras]

    def combine(self, eps_u, eps_c, step):
        return pass_through(eps_u, eps_c, step)

    def callbacks(self, ctx, denoiser):
        self._switch = SwitchLoras(denoiser, [a.adapter for a in ctx.loras], [a.weight for a in ctx.loras], self.every)
        self._switch.activate(ctx.composer.pipe, 0)
        return [self._switch]

    def step_weights(self, ctx, denoiser, steps):
        n = len(ctx.loras)
        history = self._switch.history[:steps] if self._switch else []
        return [torch.nn.functional.one_hot(torch.tensor(k), n).float().reshape(n, 1, 1) for k in history]

    def options(self):
        return {"switch_every": self.every}

    def settings(self):
        return [f"Switch every: {self.every}"]
