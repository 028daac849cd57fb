"""Masks for one composition: each LoRA's unit, role and owner, its mask source's saliency at the
chosen steps, and the routed masks the methods use (``Grounder.update`` before a step)."""
from __future__ import annotations

from typing import Any, Callable

import torch

from composer.denoiser import mixed_adapter_batch
from composer.grounding import masks as gm
from composer.grounding.phrases import Unit, own_prompt, unit_of, without
from composer.grounding.roles import role_of
from composer.grounding.sources import SOURCE_FUNCTIONS, SourceInputs
from composer.grounding.tokens import content_tokens, span_tokens
from composer.params import GroundingParams
from composer.regional import RegionState

FixedMasks = Callable[[int], torch.Tensor] | torch.Tensor  # (N, B, H, W), or per step


class Grounder:
    """Per LoRA of ``ctx``: ``units`` (None: global), ``roles``, ``owners`` (an attribute's object);
    ``update(info)`` measures the masks on the steps of ``params.steps`` and keeps ``state.masks``
    (``(N, B, H, W)``) current; ``history`` has each step's masks."""

    def __init__(self, ctx, params: GroundingParams, state: RegionState, fixed: FixedMasks | None = None) -> None:
        if params.source not in SOURCE_FUNCTIONS and params.source != "fixed":
            raise ValueError(f"unknown mask source {params.source!r}; choose one of {', '.join([*SOURCE_FUNCTIONS, 'fixed'])}")
        if params.source == "fixed" and fixed is None:
            raise ValueError("the fixed mask source needs the masks (fixed=...)")
        if params.source != "fixed" and not params.steps:
            raise ValueError("grounding needs at least one step to measure the masks on (steps)")
        self.ctx, self.params, self.state, self.fixed = ctx, params, state, fixed
        prompt = ctx.prompt
        self.units: list[Unit | None] = [unit_of(prompt, a.phrase, a.trigger_words) for a in ctx.loras]
        # An object or attribute whose unit of the prompt is unknown cannot be placed: it acts
        # everywhere without claiming anything from a background (as a concept does).
        self.roles = [role_of(a.tags) if u is not None or role_of(a.tags) not in ("object", "attribute") else "concept"
                      for a, u in zip(ctx.loras, self.units)]
        self.owners = [self._owner(i) for i in range(len(ctx.loras))]
        self.elsewhere: list[int] = []  # LoRAs a method draws elsewhere: masked out here (gm.route)
        self.history: list[torch.Tensor] = []
        self._saliency: torch.Tensor | None = None
        self._branches: dict[str, Any] | None = None

    def _owner(self, i: int) -> int | None:
        """The object an attribute qualifies: the object LoRA of its unit, else of the nearest unit."""
        if self.roles[i] != "attribute" or self.units[i] is None:
            return None
        objects = [j for j, r in enumerate(self.roles) if r == "object" and self.units[j] is not None]
        if not objects:
            return None
        return min(objects, key=lambda j: abs(self.units[j].start - self.units[i].start))

    # ------------------------------------------------------------------ prompts and encodings
    def own_prompts(self) -> list[str]:
        """Each LoRA's prompt for its region: without the other LoRAs' units (params.prompts "own"),
        or the whole prompt ("full")."""
        if self.params.prompts == "full":
            return [self.ctx.prompt] * len(self.units)
        return [own_prompt(self.ctx.prompt, u, self.units) or self.ctx.prompt for u in self.units]

    def branches(self) -> dict[str, Any]:
        """The prompt encodings the sources use (computed once per job)."""
        if self._branches is None:
            ctx, prompt = self.ctx, self.ctx.prompt
            wo = [without(prompt, [u]) if u is not None else None for u in self.units]
            self._branches = {
                "base": ctx.branch(None, None),
                "base_without": [ctx.branch(None, None, p) if p is not None else None for p in wo],
                "lora_full": [ctx.branch(a.adapter, [a]) for a in ctx.loras],
                "lora_without": [ctx.branch(a.adapter, [a], p) if p is not None else None for a, p in zip(ctx.loras, wo)],
            }
        return self._branches

    def token_sets(self) -> tuple[list[list[int]], list[int]]:
        tok = self.ctx.composer.pipe.tokenizer
        sets = [span_tokens(tok, self.ctx.prompt, u.start, u.end) if u is not None else [] for u in self.units]
        return sets, content_tokens(tok, self.ctx.prompt)

    # ------------------------------------------------------------------ masks
    def update(self, info: dict[str, Any], release: Callable[[], None] = lambda: None) -> None:
        """Before step ``info["step"]``: measure the saliency on this step's latents if it is a mask
        step, then route the running mean into ``state.masks``."""
        step, sample = info["step"], info["sample"]
        b = info["images"]
        if self.params.source == "fixed":
            masks = self.fixed(step) if callable(self.fixed) else self.fixed
            self.state.masks = masks.float()
        elif step in self.params.steps or (self.state.masks is None and step > max(self.params.steps)):
            release()  # the source calls the UNet itself: nothing of the run's batch layout may stay installed
            sal = self._measure(sample[-b:], info)
            sal = gm.normalise_max(gm.gaussian_blur(sal, self.params.sigma))
            self._saliency = sal if self._saliency is None else self._saliency + sal
            regions = gm.soft_threshold(gm.normalise_max(self._saliency), self.params.lo, self.params.hi)
            self.state.masks = gm.route(regions, self.roles, self.owners, self.params.sharpness,
                                        self.params.attribute_radius, self.elsewhere)
        if self.state.masks is not None:
            self.history.append(self.state.masks.detach().float().cpu())

    @staticmethod
    def _count(denoiser, samples: int) -> None:
        """The mask source's UNet calls count in the run's totals (what a method costs)."""
        denoiser.unet_calls += 1
        denoiser.unet_samples += samples

    def _measure(self, sample: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
        br = self.branches()
        sets, content = self.token_sets()
        time_ids = None
        added = info.get("added_cond_kwargs")
        if added is not None and "time_ids" in added:
            time_ids = added["time_ids"][-sample.shape[0]:]
        inp = SourceInputs(info["denoiser"].unet, sample, info["timestep"], time_ids, self.state,
                           br["base"], br["base_without"], br["lora_full"], br["lora_without"], sets, content,
                           mixed_adapter_batch, count=lambda n: self._count(info["denoiser"], n))
        return SOURCE_FUNCTIONS[self.params.source](inp)

