"""Regional LoRA layers: every LoRA of a composition acts only inside its mask, in ONE UNet call.

While :func:`regional_layers` holds, PEFT's own adapters are off and each LoRA linear/conv layer
adds, after its base output, ``sum_i m_i * scale_i * B_i A_i x``: LoRA i's low-rank update times its
mask resized to that layer's resolution (image tokens for linear layers, the feature map for
convolutions). Cross-attention is regional too (:class:`GroundedAttention`): each region's keys
and values come from its own prompt encoding (its LoRA's text-encoder part, its own prompt) and its
LoRA's key/value update, mixed per pixel by the masks; the part no LoRA claims gets the base
model's. So all LoRAs cost one UNet call per guidance half, as Merge does.

With every mask 1 this is Merge (the updates add up, keys and values too, exactly for LoRAs without text-encoder
parts); with one-hot masks each region is that LoRA alone. The same processor also records cross-attention to phrase tokens for the
attention mask source (``capture``).

Written by hand because no library masks LoRA updates spatially; the batched products follow
composer.stacked (one product over all LoRAs per layer).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from composer.grounding.masks import at_resolution, phrase_attention, token_grid
from composer.stacked import stacked_weights


@dataclass
class RegionState:
    """What the regional layers read at each call; the method updates it between steps.

    ``masks``: ``(N, B, H, W)`` per LoRA and image, at latent resolution (None: layers pass through).
    ``adapters``: the N PEFT adapter names, in mask order.
    ``encodings``: per region (0 = the base's, 1..N = the LoRAs') the ``(rows, L, D)`` text states
    laid out as the UNet batch is (unconditional rows, then conditional); None: no regional
    cross-attention (the call's own encoder states for every region).
    ``capture``: token positions per LoRA and the content positions; while set, the attention
    processor adds each layer's phrase-attention maps to ``captured``.
    """

    adapters: tuple[str, ...]
    masks: torch.Tensor | None = None
    encodings: list[torch.Tensor] | None = None
    active: bool = True
    capture: tuple[list[list[int]], list[int]] | None = None
    captured: list[torch.Tensor] = field(default_factory=list)

    def rows(self, batch: int, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``(N, batch, ...)`` masks for a UNet batch (the images' masks repeated per guidance half),
        resized to ``hw`` when given."""
        m = self.masks
        b = m.shape[1]
        if batch % b:
            raise ValueError(f"a batch of {batch} rows is no multiple of the {b} images' masks")
        m = m.repeat(1, batch // b, 1, 1)
        return at_resolution(m, *hw) if hw is not None else m


def _masked_update(layer: torch.nn.Module, state: RegionState, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out + sum_i m_i * (scale_i B_i A_i x)`` for the LoRAs of ``state`` that this layer has."""
    present = [a for a in state.adapters if a in layer.lora_A]
    if not present:
        return out
    a_w, b_w = stacked_weights(layer, state.adapters)  # (N, r, in[, kh, kw]), (N, out, r[, 1, 1]); zeros for absent
    a_w, b_w = a_w.to(x.dtype), b_w.to(x.dtype)
    n, r = a_w.shape[0], a_w.shape[1]
    if a_w.dim() == 3:  # linear
        if x.dim() == 2:  # (B, C): no pixels (a time embedding); each LoRA at its mean mask
            m = state.rows(x.shape[0]).mean(dim=(-2, -1))  # (N, B)
            h = torch.einsum("bi,nri->bnr", x, a_w) * m.T.unsqueeze(-1)
            return out + torch.einsum("bnr,nor->bo", h, b_w).to(out.dtype)
        tokens = x.shape[1]
        hw = token_grid(tokens, *state.masks.shape[-2:])
        m = state.rows(x.shape[0], hw).flatten(2)  # (N, B, T)
        h = torch.einsum("bti,nri->bntr", x, a_w) * m.permute(1, 0, 2).unsqueeze(-1)
        return out + torch.einsum("bntr,nor->bto", h, b_w).to(out.dtype)
    # conv: one convolution with every LoRA's down factors, masks, one 1x1 up convolution
    conv_a = layer.lora_A[present[0]]
    h = F.conv2d(x, a_w.reshape(n * r, *a_w.shape[2:]), stride=conv_a.stride, padding=conv_a.padding,
                 dilation=conv_a.dilation)
    m = state.rows(x.shape[0], h.shape[-2:])  # (N, B, h, w)
    h = (h.view(h.shape[0], n, r, *h.shape[-2:]) * m.permute(1, 0, 2, 3).unsqueeze(2)).flatten(1, 2)
    up = b_w.reshape(n, b_w.shape[1], r).permute(1, 0, 2).reshape(b_w.shape[1], n * r, 1, 1)
    return out + F.conv2d(h, up).to(out.dtype)


def _kv(layer: torch.nn.Module, states: torch.Tensor, adapter: str | None) -> torch.Tensor:
    """A key/value projection of text states with only ``adapter``'s LoRA update (None: the base)."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(layer, LoraLayer):
        return layer(states)
    out = layer.base_layer(states)
    if adapter is not None and adapter in layer.lora_A:
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        out = out + (states.to(a.dtype) @ a.T @ b.T * layer.scaling[adapter]).to(out.dtype)
    return out


class GroundedAttention:
    """A cross-attention processor (diffusers' ``AttnProcessor2_0`` contract) that makes keys and
    values regional and can record phrase attention; otherwise it hands over to the layer's own.

    Regional: pixel x attends with ``K(x) = K_0 + sum_i m_i(x) (K_i - K_0)`` (values likewise),
    ``K_0`` the base model's keys of the base encoding and ``K_i`` LoRA i's: its key update on its
    own encoding (its text-encoder part, its prompt). The logits are linear in ``K``, so this is
    N + 1 products per head, not one attention per pixel. It is the masked-update rule of every
    other layer applied to keys and values: with one-hot masks each pixel gets exactly its LoRA's
    attention; with every mask 1 and LoRAs without text-encoder parts, exactly Merge's.
    """

    def __init__(self, state: RegionState, fallback: Any) -> None:
        self.state = state
        self.fallback = fallback

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        s = self.state
        regional = s.active and s.masks is not None and s.encodings is not None
        if (encoder_hidden_states is None or hidden_states.ndim != 3 or attention_mask is not None
                or attn.spatial_norm is not None or attn.group_norm is not None or (not regional and s.capture is None)):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        batch, tokens, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        heads = attn.heads
        head_dim = query.shape[-1] // heads
        q = query.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, T, d)

        def keys_values(states: torch.Tensor, adapter: str | None) -> tuple[torch.Tensor, torch.Tensor]:
            if states.shape[0] != batch:  # no CFG: the conditional rows
                states = states[-batch:]
            if attn.norm_cross:
                states = attn.norm_encoder_hidden_states(states)
            k = _kv(attn.to_k, states, adapter).view(batch, -1, heads, head_dim).transpose(1, 2)
            v = _kv(attn.to_v, states, adapter).view(batch, -1, heads, head_dim).transpose(1, 2)
            return k, v

        if regional:
            k0, v0 = keys_values(s.encodings[0], None)
            logits = q @ k0.transpose(-1, -2)
            hw = token_grid(tokens, *s.masks.shape[-2:])
            m = s.rows(batch, hw).flatten(2).to(q.dtype).unsqueeze(2).unsqueeze(-1)  # (N, B, 1, T, 1)
            deltas = []
            for i, adapter in enumerate(s.adapters):
                k, v = keys_values(s.encodings[i + 1], adapter)
                logits = logits + m[i] * (q @ (k - k0).transpose(-1, -2))
                deltas.append(v - v0)
            probs = (logits * attn.scale).softmax(-1)
            out = probs @ v0
            for i, dv in enumerate(deltas):
                out = out + m[i] * (probs @ dv)
        else:
            k, v = keys_values(encoder_hidden_states, None)
            probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
            out = probs @ v
        if s.capture is not None:
            s.captured.append(phrase_attention(probs, *s.capture).detach())
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def regional_layers(unet: torch.nn.Module, state: RegionState, layers: bool = True) -> Iterator[RegionState]:
    """Within the block: cross-attention through :class:`GroundedAttention`, and (``layers``) PEFT's
    adapters off with every LoRA layer adding its masked update while ``state.active`` and
    ``state.masks`` are set. Everything is restored on the way out, also on error."""
    from peft.tuners.lora import LoraLayer

    handles, restore = [], []
    for name, module in unet.named_modules():
        if name.endswith("attn2") and hasattr(module, "processor"):
            restore.append((module, module.processor))
            module.processor = GroundedAttention(state, module.processor)
    if layers:
        def hook(layer: torch.nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor:
            if not state.active or state.masks is None or layer.disable_adapters is False:
                return out
            return _masked_update(layer, state, args[0] if args else kwargs["x"], out)

        for name, module in unet.named_modules():
            if isinstance(module, LoraLayer) and not name.endswith(("attn2.to_k", "attn2.to_v")):
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        yield state
    finally:
        for h in handles:
            h.remove()
        for module, processor in restore:
            module.processor = processor


@contextlib.contextmanager
def adapters_disabled(unet: torch.nn.Module, disabled: bool = True) -> Iterator[None]:
    """PEFT's adapters off (the layers return their base output) within the block."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in unet.modules() if isinstance(m, LoraLayer)]
    before = [m.disable_adapters for m in layers]
    for m in layers:
        # The flag PEFT's forward reads; its enable_adapters() would also touch requires_grad and
        # the active adapters, which the composer manages itself.
        m._disable_adapters = disabled
    try:
        yield
    finally:
        for m, b in zip(layers, before):
            m._disable_adapters = b


def run_unet(unet: torch.nn.Module, sample: torch.Tensor, timestep, states: torch.Tensor,
             added: dict | None = None) -> torch.Tensor:
    """One plain UNet call (whatever adapters and hooks are in place)."""
    return unet(sample, timestep, encoder_hidden_states=states, added_cond_kwargs=added, return_dict=False)[0]

