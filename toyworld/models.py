"""The ToyWorld Stable-Diffusion-style components, built from configs (no hub downloads).

Sizes follow /work/shared/toyworld/NOTES.md, where a trial measured that they learn the world on
two CPU cores: a (16, 32, 64) AutoencoderKL to 16x16x4 latents, a 2-layer x 64 CLIP text encoder
over a word-level tokenizer, and a (32, 64, 64) UNet2DConditionModel with cross-attention 64.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from toyworld import spec
from toyworld.captions import vocabulary

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_TOKENS = 32  # longest caption with noise is about 28 tokens with BOS/EOS
TEXT_WIDTH = 64


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=spec.SIZE,
        mid_block_add_attention=False,
    )


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose vocabulary holds every caption word, triggers and noise too.

    A real CLIP BPE would split unseen triggers into sub-words; here every word is one token, so
    a trigger is one rare token, as SPEC wants.
    """
    words = [BOS, EOS, UNK] + vocabulary()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # splits "background," into two tokens
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, words.index(BOS)), (EOS, words.index(EOS))],
    )
    # As in SD 1.x, padding repeats the end token.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,
        model_max_length=MAX_TOKENS,
    )


def build_text_encoder(tokenizer: PreTrainedTokenizerFast) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        projection_dim=TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=spec.SIZE // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_scheduler() -> DDPMScheduler:
    """SD 1.x's training schedule; DDIM and the others load from its config (steps_offset
    as in SD 1.x's scheduler config, for the samplers that read it)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    tokenizer.save_pretrained(str(path))
