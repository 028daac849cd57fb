"""Mixed-adapter batches as one stacked low-rank product per layer.

PEFT's mixed batch (``LoraLayer._mixed_batch_forward``) serves a batch whose samples carry
different adapters adapter by adapter: gather the adapter's samples, two small matmuls, scatter
back; N gathers, N scatters and 2N small kernels in every LoRA layer at every step. When the
batch is laid out adapter by adapter in runs of equal length (what ``MultiLoraDenoiser`` builds:
the base model's samples first, then each LoRA's), the LoRA samples are a view ``(N, g, ...)``
of the input: for linear layers all N low-rank updates are two batched products (``bmm``) added
in place; for conv layers each adapter's two convolutions run on its view and add in place (no
gather, no scatter). PEFT has no such path, hence this layer-level forward; anything it does not
cover (DoRA and other variants, LoRA biases, grouped convs, uneven runs) falls back to PEFT's own
mixed batch.

Measured and dropped: per-adapter merged weights (``W + scale * B @ A`` from PEFT's
``get_delta_weight``, each run of samples through its own copy; one ``bmm`` per linear layer, one
convolution per run). It does the floor's arithmetic exactly, but on this CPU it was slower than
the low-rank products: 1.74x / 1.93x the floor against 1.55x / 1.65x on the tiny UNet (N = 1 / 8),
1.37x / 1.56x against 1.06x on the 73.5M one (N = 1 / 4), because N + 1 small convolutions cost
more than one large one plus N rank-8 ones.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

BASE = "__base__"


@dataclass(frozen=True)
class Layout:
    """``offset`` samples without adapter, then ``adapters[i]`` on samples
    ``offset + i*group .. offset + (i+1)*group``."""

    offset: int
    adapters: tuple[str, ...]
    group: int


def layout_of(adapter_names: Sequence[str]) -> Layout | None:
    """The run-length layout of a per-sample adapter list, or None when it is not base-first
    followed by one run of equal length per adapter."""
    names = list(adapter_names)
    i = 0
    while i < len(names) and names[i] == BASE:
        i += 1
    offset, order, sizes = i, [], []
    while i < len(names):
        a, j = names[i], i
        while j < len(names) and names[j] == a:
            j += 1
        if a == BASE or a in order:
            return None
        order.append(a)
        sizes.append(j - i)
        i = j
    if not order or len(set(sizes)) != 1:
        return None
    return Layout(offset, tuple(order), sizes[0])


def _kind(layer: torch.nn.Module) -> str | None:
    from peft.tuners.lora import layer as lora_layer

    if type(layer) is lora_layer.Linear:
        return "linear"
    if type(layer) is lora_layer.Conv2d:
        return "conv2d"
    return None


def _eligible(layer: torch.nn.Module, adapters: tuple[str, ...]) -> bool:
    if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        return False
    if any(a in getattr(layer, "lora_variant", {}) for a in adapters):
        return False
    for a in adapters:
        if a in layer.lora_B and getattr(layer.lora_B[a], "bias", None) is not None:
            return False
        if a in layer.lora_A and isinstance(layer.lora_A[a], torch.nn.Conv2d):
            if layer.lora_A[a].groups != 1 or layer.lora_B[a].groups != 1 or layer.lora_A[a].padding_mode != "zeros":
                return False
    return True


def weights_key(layer: torch.nn.Module, adapters: tuple[str, ...]) -> tuple:
    """What the stacked weights of ``adapters`` on ``layer`` depend on: each adapter's factors
    (storage and version, so an in-place change counts) and scale."""
    return tuple(
        (a, layer.lora_A[a].weight.data_ptr(), layer.lora_A[a].weight._version,
         layer.lora_B[a].weight.data_ptr(), layer.lora_B[a].weight._version, float(layer.scaling[a]))
        if a in layer.lora_A else (a,)
        for a in adapters
    )


def stacked_weights(layer: torch.nn.Module, adapters: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every adapter's A and scaled B, zero-padded to the largest rank (an adapter that does not
    touch this layer is all zeros): linear ``(N, r, in)``, ``(N, out, r)``; conv2d
    ``(N, r, in, kh, kw)``, ``(N, out, r, 1, 1)``. Cached on the layer until a weight or scale changes."""
    key = weights_key(layer, adapters)
    cached = layer.__dict__.get("_stacked_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    present = [a for a in adapters if a in layer.lora_A]
    ref_a = layer.lora_A[present[0]].weight
    r = max(layer.lora_A[a].weight.shape[0] for a in present)
    a_shape, b_shape = list(ref_a.shape), list(layer.lora_B[present[0]].weight.shape)
    a_stack = ref_a.new_zeros([len(adapters), r, *a_shape[1:]])
    b_stack = ref_a.new_zeros([len(adapters), b_shape[0], r, *b_shape[2:]])
    for i, a in enumerate(adapters):
        if a not in layer.lora_A:
            continue
        wa, wb = layer.lora_A[a].weight, layer.lora_B[a].weight
        a_stack[i, : wa.shape[0]] = wa
        b_stack[i, :, : wb.shape[1]] = wb * layer.scaling[a]
    layer.__dict__["_stacked_cache"] = (key, (a_stack, b_stack))
    return a_stack, b_stack


def stacked_forward(layer: torch.nn.Module, plan: Layout, weights: tuple[torch.Tensor, torch.Tensor],
                    x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``base_layer(x)`` plus each adapter's low-rank update on its run of samples, all at once
    (``weights``: :func:`stacked_weights`)."""
    result = layer.base_layer(x, *args, **kwargs)
    a_w, b_w = weights
    n, g, off = len(plan.adapters), plan.group, plan.offset
    xs = x[off:].to(a_w.dtype)
    out = result[off:]
    fused = out.dtype == a_w.dtype and out.is_contiguous()
    if a_w.dim() == 3:  # linear
        h = torch.bmm(xs.reshape(n, -1, xs.shape[-1]), a_w.transpose(1, 2))
        if fused:
            # B's product accumulates straight into the result (a contiguous batch slice is a view):
            # no output-sized temporary, no separate add. The output is memory-bound here.
            out.view(n, -1, out.shape[-1]).baddbmm_(h, b_w.transpose(1, 2))
        else:
            out += torch.bmm(h, b_w.transpose(1, 2)).reshape(out.shape).to(out.dtype)
        return result
    # Each adapter's run of samples is a view; its down convolution runs on it and its 1x1 up
    # projection accumulates into the result in place. (One grouped convolution over all
    # adapters measured slower on CPU: it needs a transposed copy of the input and of the output.)
    conv_a = layer.lora_A[next(a for a in plan.adapters if a in layer.lora_A)]
    for i, adapter in enumerate(plan.adapters):
        if adapter not in layer.lora_A:
            continue
        h = F.conv2d(xs[i * g:(i + 1) * g], a_w[i], stride=conv_a.stride, padding=conv_a.padding,
                     dilation=conv_a.dilation)
        dst = out[i * g:(i + 1) * g]
        if fused:
            up = b_w[i].reshape(1, b_w.shape[1], -1).expand(g, -1, -1)
            dst.view(g, dst.shape[1], -1).baddbmm_(up, h.reshape(g, h.shape[1], -1))
        else:
            dst += F.conv2d(h, b_w[i]).to(dst.dtype)
    return result


@contextlib.contextmanager
def stacked_adapter_batch(model: torch.nn.Module, adapter_names: Sequence[str]) -> Iterator[int]:
    """Within the block, every plain LoRA linear/conv layer of ``model`` serves the per-sample
    ``adapter_names`` with :func:`stacked_forward`, and yields how many layers it serves. It
    yields 0 and changes nothing when the layout is not base-first runs of equal length (the
    caller then uses PEFT's mixed batch); layers it cannot serve get PEFT's mixed batch."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    plan = layout_of(adapter_names)
    if plan is None:
        yield 0
        return
    names = list(adapter_names)

    def pre_hook(_module, args, kwargs):
        kwargs["adapter_names"] = names
        return args, kwargs

    patched, handles = [], []
    for m in model.modules():
        if not isinstance(m, BaseTunerLayer):
            continue
        if _kind(m) is not None and _eligible(m, plan.adapters) and any(a in m.lora_A for a in plan.adapters):
            # The weights are stacked (or taken from the layer's cache) once, here: per call only
            # the products run.
            m.forward = functools.partial(stacked_forward, m, plan, stacked_weights(m, plan.adapters))
            patched.append(m)
        else:
            handles.append(m.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        yield len(patched)
    finally:
        for m in patched:
            del m.forward
        for h in handles:
            h.remove()
