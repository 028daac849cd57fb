"""What the grounded methods share: a Grounder built with the branches and updated before each step."""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import torch

from composer.grounding.grounder import FixedMasks, Grounder
from composer.methods.base import MethodContext
from composer.params import GroundingParams
from composer.regional import RegionState


class GroundedMixin:
    """Mixed into a Method with fields ``grounding`` (GroundingParams) and ``fixed`` (masks or None)."""

    grounding: GroundingParams
    fixed: FixedMasks | None

    def _ground(self, ctx: MethodContext) -> Grounder:
        params = replace(self.grounding, source="fixed") if self.fixed is not None else self.grounding
        self.state = RegionState(tuple(a.adapter for a in ctx.loras), pool=self.grounding.pool, finest=self.grounding.finest)
        self.grounder = Grounder(ctx, params, self.state, self.fixed)
        return self.grounder

    def before_step(self, info: dict[str, Any]) -> None:
        self.grounder.update(info, release=info["denoiser"].release)
        if self.state.masks is None:  # before the first mask step: every LoRA everywhere (Merge)
            b = info["images"]
            self.state.masks = torch.ones(len(self.state.adapters), b, *info["sample"].shape[-2:])

    def mask_history(self) -> list[torch.Tensor]:
        """Each step's masks ``(N, H, W)`` for the first image."""
        return [m[:, 0] for m in self.grounder.history]

    def grounding_options(self) -> dict[str, Any]:
        g = asdict(self.grounding)
        g["source"] = "fixed" if self.fixed is not None else g["source"]
        g["roles"] = list(self.grounder.roles)
        g["units"] = [u.text if u else None for u in self.grounder.units]
        return g

    def grounding_settings(self) -> str:
        g = self.grounding
        source = "fixed" if self.fixed is not None else g.source
        return f'Grounding: "source={source}, steps={list(g.steps)}, prompts={g.prompts}, roles={"/".join(self.grounder.roles)}"'
