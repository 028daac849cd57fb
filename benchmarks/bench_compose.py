"""Seconds per denoising step of LoRAtorio's batched UNet call vs sequential set_adapters vs the floor.

For N LoRAs one LoRAtorio step needs 2(N+1) UNet evaluations (base + N LoRAs, each conditional and
unconditional). Compared, on the same random-weight UNet with N random rank-8 PEFT LoRAs:

* stacked: ONE UNet call of batch 2(N+1), per-sample adapters served by composer.stacked (one
  batched low-rank product per layer: what the composer runs). As in the composer, the stacked
  forward is installed once (on its own copy of the LoRA UNet) and serves every call;
* PEFT mixed: the same call served by PEFT's own mixed batch (adapter by adapter in every layer);
* sequential: N+1 calls of batch 2, ``set_adapters`` before each (how the Multi-LoRA Composition
  reference code runs Composite);
* floor: one plain call of batch 2(N+1) on the same UNet without any LoRA layers.

Also reports the larger of max |stacked - sequential| and max |PEFT mixed - sequential| (float32).

``--fusion``: the batch of one fusion step instead (composer.methods.fusion, an object with a
background and its attribute riding along): the composition's base, object and background branches,
then the object's own trajectory (base copy, and the object with its attribute merged), each
conditional and unconditional: ``[B, B, obj, obj, bg, bg, B, B, obj+attr, obj+attr]``. Compared:
stacked (ONE call: composer.stacked serves the repeated base, the repeated object and the merged run),
before (what the composer ran until 2026-12-06: PEFT's mixed batch for the eight plain samples and a
call of its own for the merged pair) and sequential (one call per branch).
Usage:
    python benchmarks/bench_compose.py [--sizes tiny,mid,mid70] [--n 1,2,4,8] [--reps 3] [--out benchmarks/results/compose.md]
    python benchmarks/bench_compose.py --fusion --sizes toyworld,tiny,mid70 [--out benchmarks/results/compose_fusion.md]
(``toyworld``: the built-in ToyWorld UNet's configuration, random weights.)
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

from composer.denoiser import BASE, mixed_adapter_batch
from composer.stacked import stacked_adapter_batch

SIZES = {
    # diffusers' test UNet (get_dummy_components), 16x16 latents.
    "tiny": (dict(block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32, norm_num_groups=32,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")), 16),
    # 50.9M parameters, 32x32 latents.
    "mid": (dict(block_out_channels=(128, 256, 384), layers_per_block=2, cross_attention_dim=384, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")), 32),
    # 73.5M parameters, 32x32 latents: the "around 70M".
    "mid70": (dict(block_out_channels=(160, 320, 448), layers_per_block=2, cross_attention_dim=384, attention_head_dim=8,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")), 32),
}


def _toyworld() -> tuple[dict, int]:
    """The built-in ToyWorld UNet's configuration (random weights here), 16x16 latents."""
    import json

    from loraregistry.builtin import builtin_pipeline_dir

    cfg = json.loads((builtin_pipeline_dir() / "unet" / "config.json").read_text())
    keys = ("block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim", "norm_num_groups",
            "down_block_types", "up_block_types")
    return {k: cfg[k] for k in keys}, cfg["sample_size"]


def build(size: str, n: int, device: str):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    cfg, latent = _toyworld() if size == "toyworld" else SIZES[size]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=latent, in_channels=4, out_channels=4, **cfg).eval().to(device)
    floor = copy.deepcopy(unet)
    names = [f"lora{i}" for i in range(n)]
    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]), adapter_name=name)
    unet.set_adapters(names, [1.0] * n)
    return unet, floor, names, cfg["cross_attention_dim"], latent


def timeit(fns: dict, reps: int, device: str) -> dict:
    """Median seconds per call of each function, interleaved (one call of each per round) so
    that load from other processes on a shared machine hits them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def macs(model: torch.nn.Module, fn) -> int:
    """Multiply-accumulates of every nn.Linear and nn.Conv2d call (LoRA's A and B included) in ``fn()``.
    Attention's own products (QK^T, AV) are left out: they are the same with and without LoRA."""
    total = 0

    def hook(mod, inputs, out):
        nonlocal total
        if isinstance(mod, torch.nn.Linear):
            total += out.numel() * mod.in_features
        else:
            total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return total


def run(size: str, n: int, reps: int, device: str) -> dict:
    unet, floor, names, dim, latent = build(size, n, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device)
    ehs = torch.randn(2, 77, dim, generator=g).to(device)
    order = [BASE] + names
    v = len(order)
    xb, eb = x.repeat(v, 1, 1, 1), ehs.repeat(v, 1, 1)
    adapters = [a for a in order for _ in range(2)]

    def batched():
        with mixed_adapter_batch(unet, adapters):
            return unet(xb, 500, encoder_hidden_states=eb).sample

    held = copy.deepcopy(unet)  # the stacked forward stays installed on this copy, as the denoiser holds it

    def stacked():
        return held(xb, 500, encoder_hidden_states=eb).sample

    def sequential():
        outs = []
        for a in order:
            if a == BASE:
                unet.disable_adapters()
            else:
                unet.enable_adapters()
                unet.set_adapters([a], [1.0])
            outs.append(unet(x, 500, encoder_hidden_states=ehs).sample)
        unet.enable_adapters()
        return torch.cat(outs)

    def plain():
        return floor(xb, 500, encoder_hidden_states=eb).sample

    with torch.inference_mode(), stacked_adapter_batch(held, adapters):
        ref = sequential()
        diff = (batched() - ref).abs().max().item()
        diff_stacked = (stacked() - ref).abs().max().item()
        lora_macs, floor_macs = macs(unet, sequential), macs(floor, plain)
        t = timeit({"batched": batched, "stacked": stacked, "sequential": sequential, "floor": plain}, reps, device)
    params = sum(p.numel() for p in floor.parameters())
    return dict(size=size, params=params, latent=latent, n=n, batch=2 * v, **t, diff=max(diff, diff_stacked),
                macs_ratio=lora_macs / floor_macs)


def run_fusion(size: str, reps: int, device: str) -> dict:
    from composer.denoiser import only_adapters

    unet, floor, names, dim, latent = build(size, 3, device)
    obj, bg, attr = names
    g = torch.Generator().manual_seed(0)
    branches = [BASE, obj, bg, BASE, (obj, attr)]
    x = torch.randn(2 * len(branches), 4, latent, latent, generator=g).to(device)  # the own latents differ
    ehs = torch.randn(2 * len(branches), 77, dim, generator=g).to(device)
    adapters = [a for a in branches for _ in range(2)]
    plain = [i for i, a in enumerate(adapters) if not isinstance(a, tuple)]
    merged = [i for i, a in enumerate(adapters) if isinstance(a, tuple)]
    held = copy.deepcopy(unet)

    def stacked():
        return held(x, 500, encoder_hidden_states=ehs).sample

    def before():
        with mixed_adapter_batch(unet, [adapters[i] for i in plain]):
            a = unet(x[plain], 500, encoder_hidden_states=ehs[plain]).sample
        with only_adapters(unet, (obj, attr)):
            b = unet(x[merged], 500, encoder_hidden_states=ehs[merged]).sample
        out = torch.empty_like(x)
        out[plain], out[merged] = a, b
        return out

    def sequential():
        outs = []
        for k, a in enumerate(branches):
            sl = slice(2 * k, 2 * k + 2)
            if a == BASE:
                unet.disable_adapters()
                outs.append(unet(x[sl], 500, encoder_hidden_states=ehs[sl]).sample)
                unet.enable_adapters()
                continue
            with only_adapters(unet, a if isinstance(a, tuple) else (a,)):
                outs.append(unet(x[sl], 500, encoder_hidden_states=ehs[sl]).sample)
        return torch.cat(outs)

    def plain_floor():
        return floor(x, 500, encoder_hidden_states=ehs).sample

    with torch.inference_mode(), stacked_adapter_batch(held, adapters) as used:
        assert used, "the stacked forward did not take the fusion layout"
        ref = sequential()
        diff = max((stacked() - ref).abs().max().item(), (before() - ref).abs().max().item())
        t = timeit({"stacked": stacked, "before": before, "sequential": sequential, "floor": plain_floor}, reps, device)
    params = sum(p.numel() for p in floor.parameters())
    return dict(size=size, params=params, latent=latent, batch=len(adapters), **t, diff=diff)


def main_fusion(a) -> None:
    rows = []
    for size in a.sizes.split(","):
        r = run_fusion(size, a.reps, a.device)
        rows.append(r)
        print(r, flush=True)
    lines = ["| UNet | params | latents | batch | stacked s/step | before s/step | sequential s/step | floor s/step | "
             "before/stacked | stacked/floor | max abs diff |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['latent']}x{r['latent']} | {r['batch']} | {r['stacked']:.4f} | "
              f"{r['before']:.4f} | {r['sequential']:.4f} | {r['floor']:.4f} | {r['before'] / r['stacked']:.2f} | "
              f"{r['stacked'] / r['floor']:.3f} | {r['diff']:.1e} |" for r in rows]
    env = (f"device={a.device}, threads={a.threads}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
           f"median of {a.reps} interleaved rounds after 1 warm-up")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"# compose benchmark: one fusion step\n\n`python benchmarks/bench_compose.py --fusion --sizes {a.sizes} "
                    f"--reps {a.reps}`\n\n{env}\n\n{text}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,mid")
    ap.add_argument("--n", default="1,2,4,8")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--fusion", action="store_true", help="time one fusion step's batch (see above)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.fusion:
        return main_fusion(a)
    rows = []
    for size in a.sizes.split(","):
        for n in (int(s) for s in a.n.split(",")):
            r = run(size, n, a.reps, a.device)
            rows.append(r)
            print(r, flush=True)
    head = ("| UNet | params | latents | N | batch | stacked s/step | PEFT mixed s/step | sequential s/step | floor s/step | "
            "stacked/floor | PEFT mixed/floor | sequential/stacked | MACs with LoRA / floor | max abs diff |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head] + [
        f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['latent']}x{r['latent']} | {r['n']} | {r['batch']} | {r['stacked']:.4f} | "
        f"{r['batched']:.4f} | {r['sequential']:.4f} | {r['floor']:.4f} | {r['stacked'] / r['floor']:.3f} | "
        f"{r['batched'] / r['floor']:.3f} | {r['sequential'] / r['stacked']:.2f} | {r['macs_ratio']:.3f} | {r['diff']:.1e} |"
        for r in rows
    ]
    env = f"device={a.device}, threads={a.threads}, torch {torch.__version__}, {platform.processor() or platform.machine()}, median of {a.reps} interleaved rounds after 1 warm-up"
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"# compose benchmark\n\n{env}\n\n{text}\n")


if __name__ == "__main__":
    main()
