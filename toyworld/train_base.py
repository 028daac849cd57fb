"""Stage `base`: train the text encoder and UNet on the base world only (SPEC), on cached
latents, with 10% caption dropout (for classifier-free guidance), caption noise, and an EMA of
the weights; export the EMA weights as a StableDiffusionPipeline."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
from transformers import PreTrainedTokenizerFast

from toyworld import checkpoint
from toyworld.captions import add_noise, sample_base_scene
from toyworld.data import step_rng
from toyworld.ema import EMA
from toyworld.latents import cached, sample_latents
from toyworld.models import build_scheduler, build_text_encoder, build_tokenizer, build_unet

N_CACHE = 16000
CAPTION_DROPOUT = 0.1
WARMUP = 100
CKPT_EVERY = 250
EXPORT_EVERY = 1000
ASSETS = Path(__file__).resolve().parent / "assets"


def encode_text(text_encoder, tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> torch.Tensor:
    """(B, 32, 64) hidden states, tokenised exactly as StableDiffusionPipeline does."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids)[0]


def diffusion_loss(unet, text_encoder, tokenizer, scheduler, latents, prompts, gen) -> torch.Tensor:
    """Epsilon-prediction MSE at uniformly drawn timesteps (DDPM training)."""
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
    noisy = scheduler.add_noise(latents, noise, t)
    cond = encode_text(text_encoder, tokenizer, prompts)
    pred = unet(noisy, t, encoder_hidden_states=cond).sample
    return torch.nn.functional.mse_loss(pred, noise)


def training_prompts(captions: list[str], rng: np.random.Generator, dropout: float) -> list[str]:
    """SPEC caption noise on every caption, then `dropout` of them emptied for CFG."""
    return ["" if rng.random() < dropout else add_noise(c, rng) for c in captions]


def export_pipeline(vae, text_encoder, tokenizer, unet, out: Path) -> None:
    # Saved with the sampler it is evaluated with (DDIM over the training betas), so that a plain
    # from_pretrained, e.g. `loraregistry compose` with the built-in model, samples as measured.
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(build_scheduler().config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out))


def warm_start(export: Path, unet, text_encoder, ema_unet: EMA, ema_te: EMA) -> int:
    """Load an exported pipeline's UNet and text encoder into the models and their EMAs; return its step."""
    from safetensors.torch import load_file

    for model, ema, sub in ((unet, ema_unet, "unet"), (text_encoder, ema_te, "text_encoder")):
        weights = load_file(next((export / sub).glob("*.safetensors")))
        model.load_state_dict(weights)
        ema.model.load_state_dict(weights)
    return int((export / "STEP").read_text().strip())


def remap_token_embeddings(old: torch.Tensor, old_vocab: dict[str, int], new_vocab: dict[str, int],
                           seed: int) -> torch.Tensor:
    """Token embeddings for `new_vocab` from a model trained with `old_vocab`: each word keeps its
    row; a new word starts at the mean row plus noise of the rows' spread (a fresh rare token)."""
    gen = torch.Generator().manual_seed(seed)
    mean, std = old.mean(0), old.std(0)
    out = mean + std * torch.randn((len(new_vocab), old.shape[1]), generator=gen)
    for word, i in new_vocab.items():
        if word in old_vocab:
            out[i] = old[old_vocab[word]]
    return out


def init_from_pipeline(pipeline: Path, unet, text_encoder, tokenizer, seed: int) -> None:
    """Start from an exported pipeline (a previous world's base), whose vocabulary may lack words
    of this one: everything loads as it is except the token embeddings, remapped word by word."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    unet.load_state_dict(load_file(next((pipeline / "unet").glob("*.safetensors"))))
    te = load_file(next((pipeline / "text_encoder").glob("*.safetensors")))
    key = next(k for k in te if k.endswith("token_embedding.weight"))
    old_vocab = AutoTokenizer.from_pretrained(str(pipeline / "tokenizer")).get_vocab()
    te[key] = remap_token_embeddings(te[key], old_vocab, tokenizer.get_vocab(), seed)
    text_encoder.load_state_dict(te)
    added = sorted(set(tokenizer.get_vocab()) - set(old_vocab))
    print(f"[base] initialised from {pipeline}; new words {added}", flush=True)


def train_base(
    work: Path, steps: int, batch: int, lr: float, seed: int, log_every: int = 25,
    out: Path | None = None, n_cache: int = N_CACHE, init: Path | None = None,
) -> Path:
    """Train (or resume) the base model; returns the exported pipeline directory.

    `init`: fine-tune an exported pipeline for `steps` steps instead of starting from zero (how
    the v1 base learnt SPEC v2's generic backgrounds)."""
    final = out or ASSETS / "pipeline"
    done_marker = work / "base.done"
    if done_marker.exists() or (out is None and (final / "model_index.json").exists()):
        print(f"[base] done already: {final}", flush=True)
        return final
    vae = AutoencoderKL.from_pretrained(str(work / "vae")).eval()
    scale = vae.config.scaling_factor
    t0 = time.time()
    cache = cached(work / "base_latents.pt", vae, sample_base_scene, n_cache, seed, stream=1)
    print(f"[base] latent cache of {n_cache} renders ready in {time.time() - t0:.0f}s", flush=True)

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder, unet = build_text_encoder(tokenizer), build_unet()
    scheduler = build_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema_unet, ema_te = EMA(unet), EMA(text_encoder)
    start = 0
    state = checkpoint.load(work / "base.ckpt")
    if state is not None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["te"])
        opt.load_state_dict(state["opt"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_te.load_state_dict(state["ema_te"])
        start = state["step"]
        print(f"[base] resumed at step {start}", flush=True)
    elif init is not None:
        init_from_pipeline(init, unet, text_encoder, tokenizer, seed)
        ema_unet.model.load_state_dict(unet.state_dict())
        ema_te.model.load_state_dict(text_encoder.state_dict())
    elif (ASSETS / "pipeline_partial" / "STEP").exists():
        # A fresh machine has no work/ checkpoint, but the repository carries the last EMA export:
        # warm-start from it (a new optimizer state, so the warm-up runs again) rather than from zero.
        start = warm_start(ASSETS / "pipeline_partial", unet, text_encoder, ema_unet, ema_te)
        print(f"[base] warm-started from {ASSETS / 'pipeline_partial'} at step {start}", flush=True)

    warmup_from = 0 if state is not None else start
    unet.train(), text_encoder.train()
    t0, since, running = time.time(), start, 0.0
    for step in range(start, steps):
        rng = step_rng(seed, step, stream=2)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        idx = rng.integers(len(cache["captions"]), size=batch)
        latents = sample_latents(cache, idx, scale, gen)
        prompts = training_prompts([cache["captions"][i] for i in idx], rng, CAPTION_DROPOUT)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1 - warmup_from) / WARMUP)
        loss = diffusion_loss(unet, text_encoder, tokenizer, scheduler, latents, prompts, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet)
        ema_te.update(text_encoder)
        running = 0.98 * running + 0.02 * loss.item() if step > start else loss.item()
        if (step + 1) % log_every == 0:
            rate = (time.time() - t0) / (step + 1 - since)
            print(
                f"[base] step {step + 1}/{steps} loss {running:.4f} {rate:.2f}s/step "
                f"eta {rate * (steps - step - 1) / 60:.0f} min",
                flush=True,
            )
        if (step + 1) % CKPT_EVERY == 0 or step + 1 == steps:
            checkpoint.save(
                {
                    "unet": unet.state_dict(), "te": text_encoder.state_dict(),
                    "opt": opt.state_dict(), "ema_unet": ema_unet.state_dict(),
                    "ema_te": ema_te.state_dict(), "step": step + 1,
                },
                work / "base.ckpt",
            )
        if (step + 1) % EXPORT_EVERY == 0:
            export_pipeline(vae, ema_te.model, tokenizer, ema_unet.model, work / "pipeline_latest")
            (work / "pipeline_latest" / "STEP").write_text(f"{step + 1}\n")
            print(f"[base] exported EMA pipeline at step {step + 1}", flush=True)
    export_pipeline(vae, ema_te.model, tokenizer, ema_unet.model, final)
    done_marker.write_text(f"{steps}\n")
    print(f"[base] saved {final}", flush=True)
    return final
