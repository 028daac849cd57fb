"""The contract of a composition method, and what it is given to build its branches."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch

from composer.denoiser import Branch, Combined, MultiLoraDenoiser
from composer.loras import LoadedLora

if TYPE_CHECKING:
    from PIL import Image

    from composer.api import Composer, Job


@dataclass
class MethodContext:
    """One job as a method sees it: the clean prompt, its LoRAs (loaded), and how to encode a
    branch's prompt with a given set of text-encoder adapters (encodings shared within the job)."""

    composer: "Composer"
    prompt: str
    negative: str
    loras: list[LoadedLora]
    job: "Job"
    encodings: dict = field(default_factory=dict)

    def branch(self, adapter: str | None, active: list[LoadedLora] | None, prompt: str | None = None) -> Branch:
        """A branch running ``adapter`` (a PEFT adapter name, BASE, or None for the active
        adapters) on ``prompt`` (default: the job's) encoded with ``active``'s text-encoder parts."""
        return self.composer.branch(adapter, self.prompt if prompt is None else prompt, self.negative, active,
                                    self.encodings)

    @property
    def has_adapters(self) -> bool:
        return self.composer.has_adapters()


class Method:
    """A composition method (diffusers' guiders are the model: one class per method).

    Subclasses set ``name`` and implement ``branches`` and ``combine``; the rest has defaults.
    """

    name: ClassVar[str]
    needs_loras: ClassVar[bool] = True
    # Run the unconditional half for only the first n branches (None: all); ``combine`` then gets
    # eps_u with n branches.
    uncond_branches: int | None = None

    @classmethod
    def from_job(cls, job: "Job") -> "Method":
        return cls()

    def branches(self, ctx: MethodContext) -> list[Branch]:
        raise NotImplementedError

    def combine(self, eps_u: torch.Tensor | None, eps_c: torch.Tensor, step: int) -> Combined:
        raise NotImplementedError

    def callbacks(self, ctx: MethodContext, denoiser: MultiLoraDenoiser) -> list[Callable]:
        """``callback_on_step_end`` callables (between-step work: e.g. switching adapters)."""
        return []

    def before_step(self, info: dict[str, Any]) -> None:
        """Called before every computed step with the latents (``MultiLoraDenoiser``'s ``prepare``)."""

    def hooks(self, ctx: MethodContext, denoiser: MultiLoraDenoiser) -> contextlib.AbstractContextManager:
        """What the method installs in the UNet's layers for the run (taken out after, also on error)."""
        return contextlib.nullcontext()

    def finish(self, ctx: MethodContext, image: "Image.Image") -> "Image.Image":
        """The image the job returns, from the pipeline's decoded first image (pixel-space work)."""
        return image

    def step_weights(self, ctx: MethodContext, denoiser: MultiLoraDenoiser, steps: int) -> list[torch.Tensor]:
        """Per step, each LoRA's weight ``(N, Hp, Wp)`` for the first image (the weights map)."""
        return []

    def options(self) -> dict[str, Any]:
        """The method's parameters, for the JSON report."""
        return {}

    def settings(self) -> list[str]:
        """The method's parameters as A1111 ``Key: value`` items of the PNG's parameters text."""
        return []


def first_image(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """``(N, B, Hp, Wp)`` per step -> ``(N, Hp, Wp)`` of image 0."""
    return [w[:, 0] for w in weights]
