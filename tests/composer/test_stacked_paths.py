"""composer.stacked on bare PEFT layers: the in-place accumulation path (contiguous outputs), the
copy path (an output it cannot write through a view, here a channels-last convolution) and the
per-adapter merged-weight path all equal PEFT's own per-sample mixed batch."""
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


def _paths(net) -> dict[str, str]:
    return {name: getattr(net, name).__dict__["_stacked_cache"][0][0] for name in ("conv", "proj")}


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
        with stacked_adapter_batch(net, order, merge_budget_mb=0) as used:
            stacked = net(x)
    assert _paths(net) == {"conv": "lowrank", "proj": "lowrank"}
    assert used == 2
    if channels_last:  # the conv's output is not contiguous: the copy path served it
        assert not net.conv.base_layer(x).is_contiguous()
    assert (stacked - peft).abs().max().item() < 1e-5
    assert (stacked[1:3] - stacked[3:]).abs().max() > 1e-2  # the two adapters differ


@pytest.mark.parametrize("order", [[BASE, "a", "a", "b", "b"], [BASE, BASE, "a", "a", "b", "b"], ["a", "b"]],
                         ids=["base-run-shorter", "base-run-equal", "no-base"])
def test_merged_weights_path_equals_peft_mixed_batch(order):
    """Every layer on per-adapter merged weights (a base run shorter than the adapters', as long,
    or absent), then a budget that holds only the smaller layer's copies: the smallest layer is
    merged first, the other stays low-rank, and the output is the same either way."""
    net = _net()
    x = torch.randn(len(order), 4, 7, 7)
    with torch.no_grad():
        with mixed_adapter_batch(net, order):
            peft = net(x)
        with stacked_adapter_batch(net, order, merge_budget_mb=64) as used:
            merged = net(x)
        assert used == 2 and _paths(net) == {"conv": "merged", "proj": "merged"}
        proj_copies = 3 * net.proj.base_layer.weight.numel() * 4  # at most base + two adapters, float32
        with stacked_adapter_batch(net, order, merge_budget_mb=proj_copies / 2**20):
            mixed = net(x)
        assert _paths(net) == {"conv": "lowrank", "proj": "merged"}
    assert (merged - peft).abs().max().item() < 1e-5
    assert (mixed - peft).abs().max().item() < 1e-5


def test_merged_weights_follow_a_scale_change():
    """The merged copies are cached across calls, but a changed adapter scale rebuilds them."""
    net = _net()
    order = [BASE, "a", "b"]
    x = torch.randn(3, 4, 7, 7)
    with torch.no_grad():
        with stacked_adapter_batch(net, order, merge_budget_mb=64):
            before = net(x)
        for layer in (net.conv, net.proj):
            layer.scaling["a"] *= 0.5
        with stacked_adapter_batch(net, order, merge_budget_mb=64):
            after = net(x)
        with mixed_adapter_batch(net, order):
            peft = net(x)
    assert (after - peft).abs().max().item() < 1e-5
    assert (after[1] - before[1]).abs().max().item() > 1e-3
