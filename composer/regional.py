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
from composer.stacked import stacked_weights, weights_key


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
    pool: str = "area"  # how masks shrink to coarse layers (composer.grounding.masks.at_resolution)
    finest: int = 0  # masks apply on layers at most this many times coarser than the latent; coarser ones run every LoRA everywhere (0: all masked)
    captured: list[torch.Tensor] = field(default_factory=list)
    _resized: dict = field(default_factory=dict, repr=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "masks":  # new masks: the resized copies of the old ones go
            self.__dict__.setdefault("_resized", {}).clear()
        super().__setattr__(name, value)

    def rows(self, batch: int, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``(N, batch, ...)`` masks for a UNet batch (the images' masks repeated per guidance half),
        resized to ``hw`` when given. Cached until the masks change: every layer of a resolution
        asks for the same."""
        key = (batch, hw)
        if key not in self._resized:
            m = self.masks
            b = m.shape[1]
            if batch % b:
                raise ValueError(f"a batch of {batch} rows is no multiple of the {b} images' masks")
            m = m.repeat(1, batch // b, 1, 1)
            if hw is not None and self.finest and hw[0] * self.finest < m.shape[-2]:
                m = torch.ones(*m.shape[:2], *hw, dtype=m.dtype)  # a coarse layer: every LoRA everywhere (Merge)
            self._resized[key] = at_resolution(m, *hw, pool=self.pool) if hw is not None else m
        return self._resized[key]


def _flat_weights(layer: torch.nn.Module, adapters: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every LoRA's down factors as one ``(N*r, in[, kh, kw])`` weight and the up factors as one
    ``(out, N*r)`` matrix (scales folded in), cached on the layer with the stacked weights they come from."""
    key = weights_key(layer, adapters)
    cached = layer.__dict__.get("_regional_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    a_w, b_w = stacked_weights(layer, adapters)  # (N, r, in[, kh, kw]), (N, out, r[, 1, 1]); zeros where absent
    n, r = a_w.shape[:2]
    down = a_w.reshape(n * r, *a_w.shape[2:])
    up = b_w.reshape(n, b_w.shape[1], r).permute(1, 0, 2).reshape(b_w.shape[1], n * r).contiguous()
    layer.__dict__["_regional_cache"] = (key, (down, up))
    return down, up


def _masked_update(layer: torch.nn.Module, state: RegionState, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out + sum_i m_i * (scale_i B_i A_i x)`` for the LoRAs of ``state`` that this layer has:
    two products for all LoRAs (the masks multiply the rank-r activations, which is the same as
    multiplying each update, since a mask is one number per pixel)."""
    present = [a for a in state.adapters if a in layer.lora_A]
    if not present:
        return out
    down, up = _flat_weights(layer, state.adapters)
    down, up = down.to(x.dtype), up.to(x.dtype)
    n = len(state.adapters)
    r = down.shape[0] // n
    if down.dim() == 2:  # linear
        if x.dim() == 2:  # (B, C): no pixels (a time embedding); each LoRA at its mean mask
            m = state.rows(x.shape[0]).mean(dim=(-2, -1))  # (N, B)
            h = (x @ down.T).view(x.shape[0], n, r) * m.T.unsqueeze(-1)
            return out + (h.flatten(1) @ up.T).to(out.dtype)
        batch, tokens = x.shape[:2]
        hw = token_grid(tokens, *state.masks.shape[-2:])
        m = state.rows(batch, hw).flatten(2).permute(1, 2, 0).unsqueeze(-1).to(x.dtype)  # (B, T, N, 1)
        h = ((x @ down.T).view(batch, tokens, n, r) * m).view(batch * tokens, n * r)
        return out + (h @ up.T).view(out.shape).to(out.dtype)
    # conv: one convolution with every LoRA's down factors, the masks, the up projection as a product
    conv_a = layer.lora_A[present[0]]
    h = F.conv2d(x, down, stride=conv_a.stride, padding=conv_a.padding, dilation=conv_a.dilation)
    batch, _, hh, ww = h.shape
    m = state.rows(batch, (hh, ww)).permute(1, 0, 2, 3).unsqueeze(2).to(h.dtype)  # (B, N, 1, h, w)
    h = (h.view(batch, n, r, hh, ww) * m).view(batch, n * r, hh * ww)
    return out + (up @ h).view(out.shape).to(out.dtype)


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

