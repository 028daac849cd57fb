"""Regional fusion (ours): fusion's objects, each drawn on a latent of its own and pasted in, then
the single-pass regional composition instead of grounded LoRAtorio, at Merge's cost per step.

Why: ``fusion`` composes best on ToyWorld, but its composition is grounded LoRAtorio: the base and
every LoRA in a branch of their own at every step, and a mask source besides (about 5x Merge's UNet
samples). Regional composition (``composer.regional``: every LoRA's low-rank update times its mask,
all LoRAs in one UNet call) costs what Merge costs, but from the first step it loses the objects
(``toyworld_quality_by_role.md``: 1 of 72 background + character tasks): an object LoRA held to its
region of a latent that holds another LoRA's pattern draws nothing there. Here the objects come
from their own trajectories, so the regional composition only has to keep them.

For the first ``fuse_at`` steps one UNet call per guidance half holds, each row with masks of its
own (``RegionState.masks`` per row):

* the composition: every LoRA but the objects and their attributes, where its role puts it with no
  object claimed yet (a background and a style everywhere);
* per object: its LoRA and its attributes' (a halo, clothing) on its own latent and on its object
  prompt (``fusion.object_prompts``), beside a base copy on the same prompt.

At the end of step ``fuse_at - 1`` each object's region (where its own image departs from its base
copy's) is pasted into the composition's latent and becomes its mask; an attribute acts around its
object, a background where no object is, a style everywhere (``masks.route``); from then on the
composition runs alone. With two or more objects, the grounding source's masks on its steps (a few
calls) say whose place is whose, as in ``fusion``. Without an object, or after replayed first steps
(no noise left for own trajectories to start from), this is the ``regional`` method.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from composer.denoiser import Branch
from composer.grounding import masks as gm
from composer.grounding.grounder import FixedMasks
from composer.methods.fusion import OwnTrajectories, departure, object_prompts, object_regions, paste
from composer.methods.regional import Regional
from composer.methods.single import pass_through
from composer.params import GroundingParams


def _rows(blocks: list[tuple[torch.Tensor, torch.Tensor]], cfg: bool) -> torch.Tensor:
    """Per-branch pairs of ``(B, ...)`` tensors (unconditional, conditional) laid out as the UNet batch:
    branch by branch, the unconditional half first (only the conditional one without guidance)."""
    return torch.cat([torch.cat([u, c]) if cfg else c for u, c in blocks])


@dataclass
class FusionRegional(Regional):
    grounding: GroundingParams = field(default_factory=GroundingParams)
    fixed: FixedMasks | None = None
    name = "fusion-regional"

    def branches(self, ctx):
        main = super().branches(ctx)
        if self.grounding.fuse_at < 0:
            raise ValueError(f"fuse_at must be >= 0, got {self.grounding.fuse_at}")
        self.fuse_at = min(self.grounding.fuse_at, ctx.job.steps)
        g = self.grounder
        self.objects = [i for i, r in enumerate(g.roles) if r == "object"]
        self.main_encodings = self.state.encodings
        self.history: list[torch.Tensor] = []
        self.prior: torch.Tensor | None = None
        self.fused: torch.Tensor | None = None
        self.restore: torch.Tensor | None = None
        self.own = OwnTrajectories(0)
        if not self.objects or self.fuse_at <= 0:
            return main
        n = len(ctx.loras)
        own: list[Branch] = []
        # Per own trajectory: which LoRAs act on it (N,) and each region's encoding (base, then per LoRA).
        self.own_active: list[torch.Tensor] = []
        self.own_regions: list[list[Branch]] = []
        self.pairs: list[tuple[int, int]] = []  # (base copy, object) indices into the own trajectories
        bases: dict[str, int] = {}
        for j, p in zip(self.objects, object_prompts(ctx.prompt, g.units, self.objects)):
            base = ctx.branch(None, None, p)
            if p not in bases:
                bases[p] = len(own)
                own.append(base)
                self.own_active.append(torch.zeros(n))
                self.own_regions.append([base] * (n + 1))
            # The object with its attributes: an object with its clothing composes best merged
            # (by_role: merge 15/24 on ToyWorld's character + clothing, grounded methods 3/24).
            mine = [j] + [i for i, o in enumerate(g.owners) if o == j]
            self.pairs.append((bases[p], len(own)))
            own.append(ctx.branch(None, [ctx.loras[i] for i in mine], p))
            self.own_active.append(torch.zeros(n).index_fill_(0, torch.tensor(mine), 1.0))
            self.own_regions.append([base] + [ctx.branch(ctx.loras[i].adapter, [ctx.loras[i]], p) if i in mine else base
                                              for i in range(n)])
        self.own = OwnTrajectories(len(own))
        self.main_regions = [ctx.branch(None, None)] + [
            ctx.branch(a.adapter, [a], q) for a, q in zip(ctx.loras, g.own_prompts())]
        return main + own

    @property
    def drawing_alone(self) -> bool:
        return bool(self.objects) and self.fuse_at > 0

    def _route(self, objects: torch.Tensor) -> torch.Tensor:
        """Every LoRA's mask with the objects' regions ``(J, B, H, W)`` and the others' everywhere."""
        g, n = self.grounding, len(self.ctx.loras)
        regions = torch.ones(n, *objects.shape[1:])
        regions[self.objects] = objects.float()
        return gm.route(regions, list(self.grounder.roles), list(self.grounder.owners), g.sharpness, g.attribute_radius)

    def before_step(self, info):
        step, denoiser, b = info["step"], info["denoiser"], info["images"]
        if not self.drawing_alone:
            if self.restore is not None:  # the step after a replay fallback: the composition's rows alone
                self.state.masks, self.state.encodings, self.restore = self.restore, self.main_encodings, None
            super().before_step(info)
            return
        if self.fused is not None:  # after the paste: the composition alone, every LoRA in its region
            self.state.masks, self.state.encodings = self.fused, self.main_encodings
            self.history.append(self.fused[:, 0].float())
            return
        with_own = len(denoiser.active) > 1  # this step's batch (a select counts from the next step)
        if not self.own.started and step > 0:
            # The first steps were replayed (a probe's, composer.auto): the own trajectories cannot
            # start from the noise any more, so the composition goes on as the regional method.
            self.fuse_at = 0
            denoiser.select([0])
            super().before_step(info)
            main = self.restore = self.state.masks
        else:
            if len(self.objects) > 1 and self.fixed is None and step in self.grounding.steps:
                self.grounder.update(info, release=denoiser.release)  # the prior: whose place is whose
                self.prior = self.state.masks.float()[self.objects]
            if step == 0:
                self.own.start(info["sample"][-b:], self.ctx.composer.pipe.scheduler)
            denoiser.branch_samples = [None] + self.own.inputs(info["timestep"])
            main = self._route(torch.zeros(len(self.objects), b, *info["sample"].shape[-2:]))  # no object yet
            self.history.append(main[:, 0])
        if not with_own:
            self.state.masks, self.state.encodings = main, self.main_encodings
            return
        # One UNet call for the composition's rows and the own trajectories' rows, each with its masks.
        cfg = info["sample"].shape[0] == 2 * b
        ones = torch.ones(b, *main.shape[-2:])
        masks = [(main, main)] + [(v[:, None, None, None] * ones,) * 2 for v in self.own_active]
        self.state.masks = _rows([(u.transpose(0, 1), c.transpose(0, 1)) for u, c in masks], cfg).transpose(0, 1)
        self.state.encodings = [
            _rows([(self.main_regions[r].uncond, self.main_regions[r].cond)]
                  + [(regions[r].uncond, regions[r].cond) for regions in self.own_regions], cfg)
            for r in range(len(self.main_regions))]

    def combine(self, eps_u, eps_c, step):
        if eps_c.shape[0] > 1 and self.own.started:  # advance the own trajectories with their own guidance
            self.own.advance(None if eps_u is None else eps_u[1:], eps_c[1:], self.ctx.job.cfg)
        return pass_through(eps_u, eps_c, step)

    def callbacks(self, ctx, denoiser):
        if not self.drawing_alone:
            return []

        def fuse(pipe, step_index, timestep, kwargs):
            if step_index != self.fuse_at - 1:
                return kwargs
            if self.fixed is not None:  # an oracle: the given masks
                regions = self._fixed_objects(step_index)
            else:
                ref = self.own.images()
                sal = torch.stack([departure(ref[k], ref[b]) for b, k in self.pairs])  # (J, B, H, W)
                regions = object_regions(sal, self.grounding, self.prior)
            kwargs["latents"] = paste(kwargs["latents"], [self.own.latents[k] for _, k in self.pairs], regions)
            denoiser.branch_samples = None
            denoiser.select([0])
            self.fused = self._route(regions)
            return kwargs

        return [fuse]

    def _fixed_objects(self, step: int) -> torch.Tensor:
        masks = self.fixed(step) if callable(self.fixed) else self.fixed
        return masks.float()[self.objects]

    def step_weights(self, ctx, denoiser, steps):
        return self.history if self.drawing_alone else self.mask_history()

    def options(self):
        return {**super().options(), "fuse_at": self.grounding.fuse_at}

    def settings(self):
        return super().settings() + [f"Fuse at: {self.grounding.fuse_at}"]
