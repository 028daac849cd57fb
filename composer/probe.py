"""The probe: P denoising steps with all K candidates, in batched UNet calls.

It runs the stock pipeline with :class:`composer.denoiser.MultiLoraDenoiser`: the base model alone
for the first S steps (``start``), then every candidate beside it for P steps, and records each
probe step's conditional predictions (for :func:`composer.relevance.strength` and ``agreement``)
and LoRAtorio's patch similarities (for :func:`composer.relevance.probe_scores`). The latents follow
the base model's own path throughout, so every candidate is measured from the same place.

Why start later and follow the base: at the first steps the latents are noise, and a quick-trained
copy of a LoRA moves the prediction about as much as the full one; a few steps in, where the base
has laid out the image, the full one mostly moves it more. Along the base's path at steps 6-8 of 25
the full ToyWorld LoRA moved it more than its quarter-trained copy in every (prompt, seed) pair of
five skills, checkerboard 67-75%, and the halo (drawn late) only from step 12
(benchmarks/results/toyworld_probe_steps.md); selection was most often exact with the probe from
step 20 of 25 (toyworld_selection_probe_start.md), the default (SelectionParams.probe_start). Following the base also makes a candidate's
measurement independent of the other candidates (whole-image candidates steered the LoRAtorio path
the probe used to follow).

Savings over a full step: the S base steps cost 2 UNet samples each; a probe step uses the base's
unconditional prediction alone (the score only reads conditional ones), K + 2 samples instead of
2(K + 1); after step S + P the pipeline is interrupted (``pipe._interrupt``, diffusers' own early
stop) and returns latents, so nothing further is denoised or decoded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from composer.denoiser import BASE, Combined, MultiLoraDenoiser, installed
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
    start: int = 0  # steps the base ran alone before the probe's

    def report(self) -> dict[str, Any]:
        return {"steps": self.steps, "start": self.start, "top_k": self.top_k, "unet_calls": self.unet_calls,
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


def run_probe(composer, prompt: str, loras: list[LoadedLora], gen: Generation, *, probe_steps: int, start: int = 0,
              p: int = LoratorioParams.p, tau: float = LoratorioParams.tau, top_k: int | None = None) -> ProbeRun:
    """Run steps ``start`` .. ``start + probe_steps - 1`` of ``gen.steps`` (same schedule and seed
    as the composition, the base model alone before them) with every LoRA of ``loras`` and score
    each one (``composer`` is a ``composer.api.Composer``)."""
    if not loras:
        raise ValueError("the probe needs at least one candidate LoRA")
    if not 1 <= probe_steps or start < 0 or start + probe_steps > gen.steps:
        raise ValueError(f"the probe's start ({start}) and steps ({probe_steps}) must fit in the {gen.steps} "
                         "denoising steps (steps >= 1, start >= 0)")
    t0 = time.perf_counter()
    pipe = composer.pipe
    enc: dict = {}
    branches = [composer.branch(BASE, prompt, gen.negative_prompt, None, enc)]
    branches += [composer.branch(a.adapter, prompt, gen.negative_prompt, [a], enc) for a in loras]
    pipe.enable_lora()
    pipe.set_adapters([a.adapter for a in loras], [a.weight for a in loras])
    # LoRAtorio with lambda = 1 gives each probe step's patch similarities (N, B, Hp, Wp); the
    # latents advance with the base's own guided prediction (the first branch).
    params = LoratorioParams(p=p, tau=tau, lam=1.0, k=top_k)
    similarities: list[torch.Tensor] = []
    deltas: list[torch.Tensor] = []
    bases: list[torch.Tensor] = []

    def combine(u: torch.Tensor, c: torch.Tensor, step: int) -> Combined:
        if c.shape[0] == 1:  # the base alone, before the probe's steps
            return Combined(u[0], c[0])
        out = loratorio_combine(params, u, c)
        return Combined(u[0], c[0], out.weights, out.extras)

    def observe(info: dict) -> None:
        if info["step"] + 1 == start:  # the probe's steps run every candidate beside the base
            denoiser.select(range(len(branches)))
        if info["step"] < start:
            return
        similarities.append(info["similarity"].detach().float().cpu())
        eps_c = info["eps_c"].detach().float().cpu()  # (N + 1, B, ...): the base first
        deltas.append(eps_c[1:] - eps_c[:1])
        bases.append(eps_c[0])

    denoiser = MultiLoraDenoiser(pipe.unet, branches, combine, uncond_branches=1, record=True, callback=observe)
    if start:
        denoiser.select([0])
    first = branches[0]
    kwargs: dict[str, Any] = dict(
        prompt_embeds=first.cond, negative_prompt_embeds=first.uncond, num_inference_steps=gen.steps,
        guidance_scale=gen.cfg, height=gen.height, width=gen.width, output_type="latent",
        generator=torch.Generator("cpu").manual_seed(gen.seed), callback_on_step_end=_StopAfter(start + probe_steps),
    )
    if composer.is_sdxl:
        kwargs.update(pooled_prompt_embeds=first.pooled_cond, negative_pooled_prompt_embeds=first.pooled_uncond)
    with torch.inference_mode(), installed(pipe, denoiser):
        pipe(**kwargs)
    sim, d = torch.stack(similarities), torch.stack(deltas)
    return ProbeRun(sim, probe_scores(sim, top_k), probe_steps, top_k, denoiser.unet_calls, denoiser.unet_samples,
                    time.perf_counter() - t0, denoiser.outputs, strength(d, torch.stack(bases)), agreement(d), start)
