"""Mask sources behind one interface: ``source(inputs) -> (N, B, H, W)`` saliency per LoRA.

Each source answers "where does this LoRA's unit of the prompt act?" at the current latents:

* ``contrast`` - the base model's prediction with the whole prompt against the prompt without
  the LoRA's unit (one batched UNet call of 1 + N conditional samples);
* ``lora-contrast`` - the same difference for each LoRA's own prediction (its text-encoder part
  and its weights; 2N samples): the paper's observation that a LoRA follows its prompt, made
  spatial;
* ``attention`` - the base model's cross-attention to the unit's tokens, renormalised over the
  content tokens (1 sample, the attention processor records it);
* ``fixed`` - masks given by the caller (an oracle in benchmarks, or a user's own).

A LoRA with no unit (global) gets a saliency of ones. The result goes through
``masks.region`` and ``masks.route`` (composer.grounding.grounder).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from composer.denoiser import Branch
from composer.grounding.masks import at_resolution, contrast_saliency, token_grid
from composer.regional import RegionState, adapters_disabled, run_unet

SOURCES = ("contrast", "lora-contrast", "attention", "fixed")


@dataclass
class SourceInputs:
    """What a source may use at one step: the UNet, the conditional latents ``(B, C, H, W)``, the
    timestep, SDXL's time ids, and per LoRA: its unit (None: global), the base branch and the
    branch without its unit, its own branch with and without its unit, its token positions."""

    unet: torch.nn.Module
    sample: torch.Tensor
    timestep: torch.Tensor
    time_ids: torch.Tensor | None
    state: RegionState
    base: Branch
    base_without: list[Branch | None]
    lora_full: list[Branch]
    lora_without: list[Branch | None]
    token_sets: list[list[int]]
    content: list[int]
    mixed_batch: Callable  # composer.denoiser.mixed_adapter_batch
    count: Callable[[int], None] = lambda samples: None  # told the samples of each UNet call (cost reports)

    @property
    def n(self) -> int:
        return len(self.base_without)


def _call(inp: SourceInputs, branches: list[Branch]) -> torch.Tensor:
    """The conditional predictions ``(V, B, C, H, W)`` of several branches on the same latents."""
    b = inp.sample.shape[0]
    x = inp.sample.repeat(len(branches), 1, 1, 1)
    states = torch.cat([br.cond for br in branches])
    added = None
    if branches[0].pooled_cond is not None:
        added = {"text_embeds": torch.cat([br.pooled_cond for br in branches]),
                 "time_ids": inp.time_ids.repeat(len(branches), 1)}
    inp.count(x.shape[0])
    return run_unet(inp.unet, x, inp.timestep, states, added).view(len(branches), b, *inp.sample.shape[1:])


def _global_ones(inp: SourceInputs) -> torch.Tensor:
    return torch.ones(inp.n, inp.sample.shape[0], *inp.sample.shape[-2:])


def contrast(inp: SourceInputs) -> torch.Tensor:
    """|base(prompt) - base(prompt without the unit)| per LoRA."""
    out = _global_ones(inp)
    local = [i for i, br in enumerate(inp.base_without) if br is not None]
    if not local:
        return out
    with adapters_disabled(inp.unet), _inactive(inp.state):
        eps = _call(inp, [inp.base] + [inp.base_without[i] for i in local])
    for j, i in enumerate(local):
        out[i] = contrast_saliency(eps[0], eps[j + 1])
    return out


def lora_contrast(inp: SourceInputs) -> torch.Tensor:
    """|LoRA(prompt) - LoRA(prompt without the unit)| per LoRA, each with its own adapter."""
    out = _global_ones(inp)
    local = [i for i, br in enumerate(inp.lora_without) if br is not None]
    if not local:
        return out
    b = inp.sample.shape[0]
    branches, names = [], []
    for i in local:
        branches += [inp.lora_full[i], inp.lora_without[i]]
        names += [inp.state.adapters[i]] * (2 * b)
    with adapters_disabled(inp.unet, False), _inactive(inp.state), inp.mixed_batch(inp.unet, names):
        eps = _call(inp, branches)
    for j, i in enumerate(local):
        out[i] = contrast_saliency(eps[2 * j], eps[2 * j + 1])
    return out


def attention(inp: SourceInputs) -> torch.Tensor:
    """The base's cross-attention to each unit's tokens (renormalised over content tokens), averaged
    over layers and heads, at latent resolution."""
    out = _global_ones(inp)
    local = [i for i, ids in enumerate(inp.token_sets) if ids and inp.base_without[i] is not None]
    if not local:
        return out
    st = inp.state
    st.capture, st.captured = (inp.token_sets, inp.content), []
    try:
        with adapters_disabled(inp.unet), _inactive(st):
            _call(inp, [inp.base])
    finally:
        st.capture = None
    h, w = inp.sample.shape[-2:]
    maps = []
    for a in st.captured:  # (N, B, T) per layer
        hh, ww = token_grid(a.shape[-1], h, w)
        maps.append(at_resolution(a.reshape(*a.shape[:2], hh, ww), h, w))
    st.captured = []
    avg = torch.stack(maps).mean(0)
    for i in local:
        out[i] = avg[i]
    return out


class _inactive:
    """Regional layers pass through within the block (a source's calls are the plain model's)."""

    def __init__(self, state: RegionState) -> None:
        self.state = state

    def __enter__(self) -> None:
        self.before, self.state.active = self.state.active, False

    def __exit__(self, *exc) -> None:
        self.state.active = self.before


SOURCE_FUNCTIONS: dict[str, Callable[[SourceInputs], torch.Tensor]] = {
    "contrast": contrast, "lora-contrast": lora_contrast, "attention": attention,
}
