"""Stage `ae`: train the generic AutoencoderKL on renders of everything (SPEC: base scenes, skills
and combinations, because an autoencoder that never saw a checkerboard cannot decode one)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from toyworld import checkpoint
from toyworld.captions import sample_any_scene
from toyworld.data import render_batch, step_rng, to_tensor
from toyworld.models import build_vae

KL_WEIGHT = 1e-4  # per latent element, relative to the per-pixel MSE (NOTES.md)


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_ae(
    work: Path, steps: int, batch: int, lr: float, seed: int, log_every: int = 25, init: Path | None = None,
) -> Path:
    """Train (or resume) the autoencoder; returns the directory of the finished `vae`.

    `init`: fine-tune a saved AutoencoderKL instead of starting from zero (how the v1 autoencoder
    learnt SPEC v2's generic backgrounds)."""
    out = work / "vae"
    if (out / "config.json").exists():
        print(f"[ae] done already: {out}", flush=True)
        return out
    committed = Path(__file__).resolve().parent / "assets" / "vae"
    if init is None and (committed / "config.json").exists() and not (work / "ae.ckpt").exists():
        # a fresh clone carries the trained autoencoder: use it instead of training another
        import shutil

        shutil.copytree(committed, out)
        print(f"[ae] using the committed autoencoder {committed}", flush=True)
        return out
    ckpt_path = work / "ae.ckpt"
    torch.manual_seed(seed)
    vae = build_vae()
    if init is not None:
        from diffusers import AutoencoderKL

        vae.load_state_dict(AutoencoderKL.from_pretrained(str(init)).state_dict())
        print(f"[ae] fine-tuning {init}", flush=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = 0
    state = checkpoint.load(ckpt_path)
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"[ae] resumed at step {start}", flush=True)
    vae.train()
    t0, since = time.time(), start
    for step in range(start, steps):
        rng = step_rng(seed, step)
        images, _ = render_batch(sample_any_scene, batch, rng)
        x = to_tensor(images)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + KL_WEIGHT * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            rate = (time.time() - t0) / (step + 1 - since)
            print(
                f"[ae] step {step + 1}/{steps} mse {mse.item():.5f} kl {kl.item():.3f} "
                f"{rate:.2f}s/step eta {rate * (steps - step - 1) / 60:.1f} min",
                flush=True,
            )
        if (step + 1) % 100 == 0:
            checkpoint.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt_path)
    vae.eval()
    scale = latent_scaling(vae, seed)
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(str(out))
    print(f"[ae] saved {out} scaling_factor {scale:.4f} in {(time.time() - t0) / 60:.1f} min", flush=True)
    return out


@torch.no_grad()
def latent_scaling(vae, seed: int, n: int = 512) -> float:
    """1 / std of the latents, as SD's scaling_factor: makes latents roughly unit variance."""
    images, _ = render_batch(sample_any_scene, n, step_rng(seed, 0, stream=99))
    z = vae.encode(to_tensor(images)).latent_dist.sample()
    return float(1.0 / z.std())
