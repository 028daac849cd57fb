"""One of the other methods, chosen per job by the roles of its LoRAs (ours).

The methods fail in different places (``benchmarks/results/toyworld_quality*.md``, per category):
an object LoRA beside other LoRAs draws its object best on a latent of its own, pasted in
(``fusion``: LoRAtorio's SoftMin hands its patches to a background, and even held to its own region
it fails on a background it never saw); since an object draws alone with its attributes merged in,
that holds for an object with its attribute too (until then Merge was chosen there;
``toyworld_fusion.md``); and a background or a style beside anything else but an object composes
best under LoRAtorio, which is also the paper's method. The rule was read off seeds 0-3 of the
quality benchmark and checked on seeds 4-7, which it never saw (``toyworld_quality_by_role.md``,
``toyworld_quality_fusion.md``, ``toyworld_fusion.md``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from composer.grounding.grounder import FixedMasks
from composer.grounding.roles import role_of
from composer.methods.base import Method, MethodContext
from composer.params import GroundingParams, LoratorioParams


def method_for_roles(roles: list[str]) -> str:
    """The method name for LoRAs of these roles (``composer.grounding.roles.ROLES``)."""
    if "object" in roles and len(roles) > 1:
        return "fusion"
    return "loratorio"


@dataclass
class ByRole(Method):
    params: LoratorioParams = field(default_factory=LoratorioParams)
    grounding: GroundingParams = field(default_factory=GroundingParams)
    fixed: FixedMasks | None = None
    name = "by-role"
    chosen: Method | None = field(default=None, init=False)  # set by ``branches``

    @classmethod
    def from_job(cls, job: Any) -> "ByRole":
        return cls(job.params, job.grounding, job.masks)

    def branches(self, ctx: MethodContext):
        from composer.methods.fusion import Fusion
        from composer.methods.loratorio import Loratorio

        choice = method_for_roles([role_of(a.tags) for a in ctx.loras])
        self.chosen = {"fusion": lambda: Fusion(self.params, self.grounding, self.fixed),
                       "loratorio": lambda: Loratorio(self.params)}[choice]()  # fmt: skip
        return self.chosen.branches(ctx)

    # Everything else is the chosen method's (the composer asks only after ``branches``).
    @property
    def uncond_branches(self) -> int | None:  # type: ignore[override]
        return self.chosen.uncond_branches

    def combine(self, eps_u, eps_c, step):
        return self.chosen.combine(eps_u, eps_c, step)

    def callbacks(self, ctx, denoiser):
        return self.chosen.callbacks(ctx, denoiser)

    def before_step(self, info):
        self.chosen.before_step(info)

    def hooks(self, ctx, denoiser):
        return self.chosen.hooks(ctx, denoiser)

    def finish(self, ctx, image):
        return self.chosen.finish(ctx, image)

    def step_weights(self, ctx, denoiser, steps):
        return self.chosen.step_weights(ctx, denoiser, steps)

    def options(self) -> dict[str, Any]:
        return {"chosen": self.chosen.name, **self.chosen.options()} if self.chosen else {}

    def settings(self) -> list[str]:
        return [f"Chosen method: {self.chosen.name}", *self.chosen.settings()] if self.chosen else []
