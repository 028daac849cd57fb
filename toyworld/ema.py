"""Exponential moving average of a model's weights (what the exported pipeline uses)."""

from __future__ import annotations

import copy

import torch


class EMA:
    """Shadow copy updated as shadow += (1 - d) * (model - shadow), with the usual warm-up
    d = min(decay, (1 + n) / (10 + n)) so early, random weights are forgotten quickly."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        shadow = [p for p in self.model.parameters()]
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(shadow, live, 1.0 - d)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
