"""LoRAtorio with a spatial prior (ours): the paper's per-patch SoftMin over the LoRAs' divergence
from the base, multiplied by each LoRA's grounding mask and renormalised
(``composer.math.spatial_prior``), so that a LoRA that diverges everywhere (a background, a
style) no longer takes an object's patches. Re-centred guidance and the intrinsic weights stay."""
from __future__ import annotations

from dataclasses import dataclass, field

from composer.denoiser import BASE
from composer.grounding.grounder import FixedMasks
from composer.methods.grounded import GroundedMixin
from composer.methods.loratorio import Loratorio, loratorio_combine
from composer.params import GroundingParams, LoratorioParams
from composer.regional import regional_layers


@dataclass
class GroundedLoratorio(GroundedMixin, Loratorio):
    params: LoratorioParams = field(default_factory=LoratorioParams)
    grounding: GroundingParams = field(default_factory=GroundingParams)
    fixed: FixedMasks | None = None
    name = "grounded-loratorio"

    @classmethod
    def from_job(cls, job):
        return cls(job.params, job.grounding, job.masks)

    def branches(self, ctx):
        grounder = self._ground(ctx)
        if self.grounding.branch_prompts == "full":
            return super().branches(ctx)
        # Each LoRA on its own phrase and the shared context: an object LoRA no longer hears the
        # background phrase it would otherwise draw inside its own region.
        own = [ctx.branch(a.adapter, [a], p) for a, p in zip(ctx.loras, grounder.own_prompts())]
        return [ctx.branch(BASE, None)] + own

    def hooks(self, ctx, denoiser):
        # Only the attention processor (the attention mask source records through it); the LoRA
        # layers run as LoRAtorio's branches do.
        return regional_layers(denoiser.unet, self.state, layers=False)

    def combine(self, eps_u, eps_c, step):
        return loratorio_combine(self.params, eps_u, eps_c, prior=self.state.masks)

    def options(self):
        return {**super().options(), "grounding": self.grounding_options()}

    def settings(self):
        return super().settings() + [self.grounding_settings()]
