"""Between-step work for the stock pipeline loop, through ``callback_on_step_end``.

diffusers calls ``callback_on_step_end(pipe, i, t, callback_kwargs)`` after ``scheduler.step`` of
step i, so it is the place to change which adapter runs at step i + 1 (the Switch baseline of
Zhong et al. 2024, "Multi-LoRA Composition for Image Generation", arXiv:2402.16843).
"""
from __future__ import annotations

from typing import Callable, Sequence


class SwitchLoras:
    """Activate one LoRA at a time, rotating every ``every`` steps.

    Inside the loop ``pipe.unet`` is the wrapper, so adapters are set on the real UNet with
    diffusers' ``UNet2DConditionModel.set_adapters`` (prompt encodings are already computed).
    """

    tensor_inputs: list[str] = []

    def __init__(self, denoiser, adapters: Sequence[str], weights: Sequence[float], every: int = 1):
        if every < 1:
            raise ValueError(f"switch interval must be >= 1, got {every}")
        self.denoiser, self.adapters, self.weights, self.every = denoiser, list(adapters), list(weights), every
        self.history: list[int] = []

    def index_for_step(self, step: int) -> int:
        return (step // self.every) % len(self.adapters)

    def activate(self, pipe, step: int) -> None:
        k = self.index_for_step(step)
        self.denoiser.unet.set_adapters([self.adapters[k]], [self.weights[k]])
        self.denoiser.select([k])
        self.history.append(k)

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        if self.index_for_step(step_index + 1) != self.index_for_step(step_index):
            self.activate(pipe, step_index + 1)
        else:
            self.history.append(self.history[-1])
        return callback_kwargs


class StepCallbacks:
    """Run several ``callback_on_step_end`` callables in order (tensor inputs: none)."""

    tensor_inputs: list[str] = []

    def __init__(self, *callbacks: Callable | None):
        self.callbacks = [c for c in callbacks if c is not None]

    def __call__(self, pipe, step_index, timestep, callback_kwargs):
        for c in self.callbacks:
            callback_kwargs = c(pipe, step_index, timestep, callback_kwargs) or callback_kwargs
        return callback_kwargs


def progress_callback(report: Callable[[int, int], None], total: int):
    """A callback that reports ``(steps done, total)`` after every step."""

    def _cb(pipe, step_index, timestep, callback_kwargs):
        report(step_index + 1, total)
        return callback_kwargs

    return _cb
