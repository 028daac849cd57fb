"""composer.stacked on bare PEFT layers: the in-place accumulation path (contiguous outputs) and
the copy path (an output it cannot write through a view, here a channels-last convolution) both
equal PEFT's own per-sample mixed batch."""
from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from composer.denoiser import BASE, mixed_adapter_batch
from composer.stacked import stacked_adapter_batch


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.proj = torch.nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x).permute(0, 2, 3, 1))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = Net()
    for name, r in (("a", 2), ("b", 3)):
        inject_adapter_in_model(LoraConfig(r=r, lora_alpha=2 * r, target_modules=["conv", "proj"]), net, adapter_name=name)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # lora_B starts at zero: make the adapters act
    return net


@pytest.mark.parametrize("channels_last", [False, True])
def test_stacked_equals_peft_mixed_batch(channels_last):
    net = _net()
    order = [BASE, "a", "a", "b", "b"]
    x = torch.randn(len(order), 4, 7, 7)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        with mixed_adapter_batch(net, order):
            peft = net(x)
        with stacked_adapter_batch(net, order) as used:
            stacked = net(x)
    assert used == 2
    if channels_last:  # the conv's output is not contiguous: the copy path served it
        assert not net.conv.base_layer(x).is_contiguous()
    assert (stacked - peft).abs().max().item() < 1e-5
    assert (stacked[1:3] - stacked[3:]).abs().max() > 1e-2  # the two adapters differ


@pytest.mark.parametrize("order", [
    [BASE, "a", "a", "b", "b"],  # equal runs: the batched products
    [BASE, "a", "a", BASE, "b", "b"],  # any other layout: run by run
])
def test_stacked_in_bfloat16_equals_peft_mixed_batch(order):
    """A half-precision model (as on a GPU; bfloat16 runs on this CPU): the in-place paths in that
    dtype agree with PEFT's mixed batch to bfloat16's resolution."""
    net = _net().to(torch.bfloat16)
    x = torch.randn(len(order), 4, 7, 7, dtype=torch.bfloat16)
    with torch.no_grad():
        with mixed_adapter_batch(net, order):
            peft = net(x).float()
        with stacked_adapter_batch(net, order) as used:
            stacked = net(x)
    assert used == 2 and stacked.dtype == torch.bfloat16
    assert (stacked.float() - peft).abs().max().item() < 0.02 * peft.abs().max().item()
    a, b = order.index("a"), order.index("b")
    assert (stacked[a] - stacked[b]).abs().max() > 0.1  # the two adapters differ


def _peft_reference(net: torch.nn.Module, order: list, x: torch.Tensor) -> torch.Tensor:
    """Each sample through PEFT alone with its adapters active (a tuple: those merged)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in net.modules() if isinstance(m, BaseTunerLayer)]
    out = []
    for i, name in enumerate(order):
        for m in layers:
            m.set_adapter(list(name) if isinstance(name, tuple) else [name])
        for m in layers:
            m.enable_adapters(name != BASE)  # the base model alone
        out.append(net(x[i : i + 1]))
    for m in layers:
        m.enable_adapters(True)
        m.set_adapter(["a"])
    return torch.cat(out)


@pytest.mark.parametrize("order", [
    [BASE, "a", BASE, "a", "b", "b", "b"],  # fusion's: base copies between runs, an adapter twice, uneven runs
    [BASE, ("a", "b"), ("a", "b"), "a", BASE],  # a merged run (an object with its attribute)
    [BASE, ("a", "b"), ("a", "b"), "a", "a"],  # merged, in the equal-runs layout
])
def test_any_layout_and_merged_runs_equal_peft(order):
    net = _net()
    x = torch.randn(len(order), 4, 7, 7)
    with torch.no_grad():
        with stacked_adapter_batch(net, order) as used:
            stacked = net(x)
        reference = _peft_reference(net, order, x)
    assert used == 2
    assert (stacked - reference).abs().max().item() < 1e-5
    for i, name in enumerate(order):  # the adapters act: each sample differs from the base model's
        if name != BASE:
            with torch.no_grad():
                base = _peft_reference(net, [BASE], x[i : i + 1])
            assert (stacked[i] - base[0]).abs().max() > 1e-2, i


def test_cached_plans_serve_alternating_layouts_as_fresh_ones():
    """With a plan cache (fusion's batch alternates between two layouts, ``own_stride``) each layout
    installed again from the cache gives what a fresh install gives, and leaves no layer patched."""
    net = _net()
    layouts = [[BASE, "a", "a", "b", "b"], [BASE, "a", BASE, "b", ("a", "b")]]
    xs = [torch.randn(len(o), 4, 7, 7) for o in layouts]
    plans: dict = {}
    with torch.no_grad():
        fresh = []
        for order, x in zip(layouts, xs):
            with stacked_adapter_batch(net, order) as used:
                assert used == 2
                fresh.append(net(x))
        for _ in range(2):
            for order, x, want in zip(layouts, xs, fresh):
                with stacked_adapter_batch(net, order, plans) as used:
                    assert used == 2 and torch.equal(net(x), want)
    assert set(plans) == {"__layers__", *(tuple(o) for o in layouts)}
    assert not any("forward" in m.__dict__ for m in net.modules())
