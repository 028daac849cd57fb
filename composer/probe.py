"""The probe: the first P denoising steps with all K candidates, in batched UNet calls.

It runs the stock pipeline with :class:`composer.denoiser.MultiLoraDenoiser` in LoRAtorio's
dynamic setting (per-patch top-k over the candidates), so the latents it advances are those of a
real LoRAtorio composition of the K candidates, and records each step's patch similarities for
:func:`composer.relevance.probe_scores`. Two savings over a full LoRAtorio step:

* guidance uses the base model's unconditional prediction alone (LoRAtorio with lambda = 1), so a
  step costs K + 2 UNet samples instead of 2(K + 1); the score only reads conditional predictions;
* after step P the pipeline is interrupted (``pipe._interrupt``, diffusers' own early stop) and
  returns latents, so nothing further is denoised or decoded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from composer.denoiser import BASE, MultiLoraDenoiser, installed
from composer.loras import LoadedLora
from composer.methods.loratorio import loratorio_combine
from composer.params import Generation, LoratorioParams
from composer.relevance import ProbeScores, agreement, probe_scores, strength


@dataclass
class ProbeRun:
    similarity: torch.Tensor  # (P, N, B, Hp, Wp)
    scores: ProbeScores
    steps: int
    top_k: int | None
    unet_calls: int
    unet_samples: int
    seconds: float
    outputs: list[torch.Tensor] = field(default_factory=list)  # each step's guided prediction, for replay
    strength: torch.Tensor | None = None  # (N,) composer.relevance.strength
    agreement: torch.Tensor | None = None  # (N, N) composer.relevance.agreement

    def report(self) -> dict[str, Any]:
        return {"steps": self.steps, "top_k": self.top_k, "unet_calls": self.unet_calls,
                "unet_samples": self.unet_samples, "seconds": round(self.seconds, 3)}


class _StopAfter:
    """``callback_on_step_end`` that interrupts the pipeline once ``n`` steps are done."""

    tensor_inputs: list[str] = []

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        if step_index + 1 >= self.n:
            pipe._interrupt = True
        return callback_kwargs


def run_probe(composer, prompt: str, loras: list[LoadedLora], gen: Generation, *, probe_steps: int,
              p: int = LoratorioParams.p, tau: float = LoratorioParams.tau, top_k: int | None = None) -> ProbeRun:
    """Run the first ``probe_steps`` of ``gen.steps`` (same schedule and seed as the composition)
    with every LoRA of ``loras`` and score each one (``composer`` is a ``composer.api.Composer``)."""
    if not loras:
        raise ValueError("the probe needs at least one candidate LoRA")
    if not 1 <= probe_steps <= gen.steps:
        raise ValueError(f"probe steps must be between 1 and the {gen.steps} denoising steps, got {probe_steps}")
    t0 = time.perf_counter()
    pipe = composer.pipe
    enc: dict = {}
    branches = [composer.branch(BASE, prompt, gen.negative_prompt, None, enc)]
    branches += [composer.branch(a.adapter, prompt, gen.negative_prompt, [a], enc) for a in loras]
    pipe.enable_lora()
    pipe.set_adapters([a.adapter for a in loras], [a.weight for a in loras])
    # Dynamic LoRAtorio with lambda = 1 (the base's unconditional prediction alone); the callback
    # keeps each step's patch similarities (N, B, Hp, Wp) for the scores.
    params = LoratorioParams(p=p, tau=tau, lam=1.0, k=top_k)
    similarities: list[torch.Tensor] = []
    deltas: list[torch.Tensor] = []
    bases: list[torch.Tensor] = []

    def observe(info: dict) -> None:
        similarities.append(info["similarity"].detach().float().cpu())
        eps_c = info["eps_c"].detach().float().cpu()  # (N + 1, B, ...): the base first
        deltas.append(eps_c[1:] - eps_c[:1])
        bases.append(eps_c[0])

    denoiser = MultiLoraDenoiser(pipe.unet, branches, lambda u, c, step: loratorio_combine(params, u, c),
                                 uncond_branches=1, record=True, callback=observe)
    first = branches[0]
    kwargs: dict[str, Any] = dict(
        prompt_embeds=first.cond, negative_prompt_embeds=first.uncond, num_inference_steps=gen.steps,
        guidance_scale=gen.cfg, height=gen.height, width=gen.width, output_type="latent",
        generator=torch.Generator("cpu").manual_seed(gen.seed), callback_on_step_end=_StopAfter(probe_steps),
    )
    if composer.is_sdxl:
        kwargs.update(pooled_prompt_embeds=first.pooled_cond, negative_pooled_prompt_embeds=first.pooled_uncond)
    with torch.inference_mode(), installed(pipe, denoiser):
        pipe(**kwargs)
    sim, d = torch.stack(similarities), torch.stack(deltas)
    return ProbeRun(sim, probe_scores(sim, top_k), probe_steps, top_k, denoiser.unet_calls, denoiser.unet_samples,
                    time.perf_counter() - t0, denoiser.outputs, strength(d, torch.stack(bases)), agreement(d))
