"""Mixed-adapter batches as one stacked low-rank product per layer.

PEFT's mixed batch (``LoraLayer._mixed_batch_forward``) serves a batch whose samples carry
different adapters adapter by adapter: gather the adapter's samples, two small matmuls, scatter
back; N gathers, N scatters and 2N small kernels in every LoRA layer at every step. When the
batch is laid out adapter by adapter in runs of equal length (what ``MultiLoraDenoiser`` builds:
the base model's samples first, then each LoRA's), the LoRA samples are a view ``(N, g, ...)``
of the input: for linear layers all N low-rank updates are two batched products (``bmm``) added
in place; for conv layers each adapter's two convolutions run on its view and add in place (no
gather, no scatter). PEFT has no such path, hence this layer-level forward; a layer it does not
cover (DoRA and other variants, LoRA biases, grouped convs, convolutions of different shapes)
falls back to PEFT's own mixed batch.

Any other layout (the base model's samples between LoRA runs, an adapter in several runs, runs of
different lengths: fusion's batch, where each object's own trajectory and its base copy follow the
composition's branches) is served run by run: two small products per run, on views of the input
and the output, still without gather or scatter. A run may carry several adapters merged (a tuple
of names, fusion's object with its attributes): their factors are concatenated along the rank, so
that ``B_1 A_1 x + B_2 A_2 x = [B_1 B_2] [A_1; A_2] x`` is one low-rank product, and the whole
batch stays one UNet call (PEFT's mixed batch has one adapter per sample).

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


Key = str | tuple[str, ...]  # one adapter, or several merged


def runs_of(adapter_names: Sequence[Key]) -> list[tuple[Key, int, int]]:
    """Every maximal run of equal names but the base model's, as ``(name, start, end)``."""
    out, i, names = [], 0, list(adapter_names)
    while i < len(names):
        j = i
        while j < len(names) and names[j] == names[i]:
            j += 1
        if names[i] != BASE:
            out.append((names[i], i, j))
        i = j
    return out


def _parts(key: Key) -> tuple[str, ...]:
    return key if isinstance(key, tuple) else (key,)


def _kind(layer: torch.nn.Module) -> str | None:
    from peft.tuners.lora import layer as lora_layer

    if type(layer) is lora_layer.Linear:
        return "linear"
    if type(layer) is lora_layer.Conv2d:
        return "conv2d"
    return None


def _eligible(layer: torch.nn.Module, keys: Sequence[Key]) -> bool:
    adapters = [a for k in keys for a in _parts(k)]
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
    convs = [layer.lora_A[a] for a in adapters if a in layer.lora_A and isinstance(layer.lora_A[a], torch.nn.Conv2d)]
    if len({(c.stride, c.padding, c.dilation, c.kernel_size) for c in convs}) > 1:
        return False  # the runs share one convolution's geometry
    return True


def weights_key(layer: torch.nn.Module, adapters: Sequence[Key]) -> tuple:
    """What the stacked weights of ``adapters`` on ``layer`` depend on: each adapter's factors
    (storage and version, so an in-place change counts) and scale."""
    return tuple(
        tuple((a, layer.lora_A[a].weight.data_ptr(), layer.lora_A[a].weight._version,
               layer.lora_B[a].weight.data_ptr(), layer.lora_B[a].weight._version, float(layer.scaling[a]))
              if a in layer.lora_A else (a,) for a in _parts(k))
        for k in adapters
    )


def factors(layer: torch.nn.Module, key: Key) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One run's A and scaled B on ``layer`` (linear ``(r, in)``, ``(out, r)``; conv2d
    ``(r, in, kh, kw)``, ``(out, r, 1, 1)``); several merged adapters' concatenated along the rank;
    None when none of them touches this layer."""
    present = [a for a in _parts(key) if a in layer.lora_A]
    if not present:
        return None
    a = torch.cat([layer.lora_A[n].weight for n in present])
    b = torch.cat([layer.lora_B[n].weight * layer.scaling[n] for n in present], dim=1)
    return a, b


def stacked_weights(layer: torch.nn.Module, adapters: tuple[Key, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every adapter's A and scaled B, zero-padded to the largest rank (an adapter that does not
    touch this layer is all zeros): linear ``(N, r, in)``, ``(N, out, r)``; conv2d
    ``(N, r, in, kh, kw)``, ``(N, out, r, 1, 1)``. Cached on the layer until a weight or scale changes."""
    key = weights_key(layer, adapters)
    cached = layer.__dict__.get("_stacked_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    each = [factors(layer, k) for k in adapters]
    ref_a, ref_b = next(f for f in each if f is not None)
    r = max(f[0].shape[0] for f in each if f is not None)
    a_stack = ref_a.new_zeros([len(adapters), r, *ref_a.shape[1:]])
    b_stack = ref_a.new_zeros([len(adapters), ref_b.shape[0], r, *ref_b.shape[2:]])
    for i, f in enumerate(each):
        if f is None:
            continue
        a_stack[i, : f[0].shape[0]] = f[0]
        b_stack[i, :, : f[1].shape[1]] = f[1]
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
    conv_a = _first_conv(layer, plan.adapters)
    for i, adapter in enumerate(plan.adapters):
        if not any(a in layer.lora_A for a in _parts(adapter)):
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


def _first_conv(layer: torch.nn.Module, keys: Sequence[Key]) -> torch.nn.Conv2d:
    return layer.lora_A[next(a for k in keys for a in _parts(k) if a in layer.lora_A)]


def runs_forward(layer: torch.nn.Module, runs: list[tuple[tuple[torch.Tensor, torch.Tensor], int, int]],
                 conv: torch.nn.Conv2d | None, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``base_layer(x)`` plus each run's low-rank update on its samples (``runs``: ``(factors,
    start, end)``, :func:`factors`; ``conv``: a LoRA down convolution of the layer, for its
    geometry), run by run on views: any layout."""
    result = layer.base_layer(x, *args, **kwargs)
    for (a_w, b_w), s, e in runs:
        xs, dst = x[s:e].to(a_w.dtype), result[s:e]
        fused = dst.dtype == a_w.dtype and dst.is_contiguous()
        if a_w.dim() == 2:  # linear
            h = xs.reshape(-1, xs.shape[-1]) @ a_w.T
            if fused:
                dst.view(-1, dst.shape[-1]).addmm_(h, b_w.T)
            else:
                dst += (h @ b_w.T).reshape(dst.shape).to(dst.dtype)
            continue
        h = F.conv2d(xs, a_w, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        if fused:
            g = e - s
            up = b_w.reshape(1, b_w.shape[0], -1).expand(g, -1, -1)
            dst.view(g, dst.shape[1], -1).baddbmm_(up, h.reshape(g, h.shape[1], -1))
        else:
            dst += F.conv2d(h, b_w).to(dst.dtype)
    return result


@dataclass
class Plan:
    """What :func:`stacked_adapter_batch` installs for one per-sample adapter list: each served
    layer's forward (its weights already gathered), and the layers left to PEFT's mixed batch."""

    names: list
    forwards: list[tuple[torch.nn.Module, functools.partial]]
    hooked: list[torch.nn.Module]


def lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every PEFT tuner layer of ``model`` (a walk over all its modules)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def plan_for(layers: Sequence[torch.nn.Module], adapter_names: Sequence[Key]) -> Plan | None:
    """The :class:`Plan` for these per-sample adapters on these LoRA layers; None when no sample
    has an adapter, or when a merged run meets a layer the stacked forward cannot serve (PEFT's
    mixed batch, the fallback for such a layer, has one adapter per sample)."""
    names = list(adapter_names)
    plan = layout_of(names)
    runs = runs_of(names)
    keys = list(dict.fromkeys(k for k, _, _ in runs))
    if not runs:
        return None

    def touched(m) -> bool:
        return any(a in m.lora_A for k in keys for a in _parts(k))

    served = {id(m): _kind(m) is not None and _eligible(m, keys) and touched(m) for m in layers}
    if any(isinstance(k, tuple) for k in keys) and any(touched(m) and not served[id(m)] for m in layers):
        return None
    forwards, hooked = [], []
    for m in layers:
        if not served[id(m)]:
            hooked.append(m)
        elif plan is not None:  # the weights are stacked (or taken from the layer's cache) once, here
            forwards.append((m, functools.partial(stacked_forward, m, plan, stacked_weights(m, plan.adapters))))
        else:
            per_key = {k: factors(m, k) for k in keys}
            conv = _first_conv(m, keys) if _kind(m) == "conv2d" else None
            forwards.append((m, functools.partial(runs_forward, m, [(per_key[k], s, e) for k, s, e in runs
                                                                     if per_key[k] is not None], conv)))
    return Plan(names, forwards, hooked)


@contextlib.contextmanager
def stacked_adapter_batch(model: torch.nn.Module, adapter_names: Sequence[Key],
                          plans: dict | None = None) -> Iterator[int]:
    """Within the block, every plain LoRA linear/conv layer of ``model`` serves the per-sample
    ``adapter_names`` (names, or tuples of names merged) with :func:`stacked_forward` (base-first
    runs of equal length) or :func:`runs_forward` (any other layout), and yields how many layers it
    serves; layers it cannot serve get PEFT's mixed batch. It yields 0 and changes nothing when no
    sample has an adapter, or when a merged run meets a layer it cannot serve (the caller then
    runs the merged samples apart).

    ``plans``: a cache of plans (and of the model's LoRA layers) the caller keeps while neither the
    adapters nor their weights change (one generation): a method whose batch alternates between
    layouts (fusion's ``own_stride``) then installs each without walking the modules again, which
    cost about a sixth of a compose in a profile."""
    key = tuple(adapter_names)
    if plans is not None and key in plans:
        plan = plans[key]
    else:
        if plans is not None and "__layers__" not in plans:
            plans["__layers__"] = lora_layers(model)
        plan = plan_for(plans["__layers__"] if plans is not None else lora_layers(model), key)
        if plans is not None:
            plans[key] = plan
    if plan is None:
        yield 0
        return
    names = plan.names

    def pre_hook(_module, args, kwargs):
        kwargs["adapter_names"] = names
        return args, kwargs

    for m, forward in plan.forwards:
        m.forward = forward
    handles = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in plan.hooked]
    try:
        yield len(plan.forwards)
    finally:
        for m, _ in plan.forwards:
            del m.forward
        for h in handles:
            h.remove()
