"""A unit's token positions in the text encoder's sequence, by the tokenizer's own rules.

The pipeline encodes the prompt string as it is (diffusers does not parse A1111's ``(word:1.2)``
weights: the brackets and the number are tokens too), padded or truncated to the tokenizer's
``model_max_length`` (77 for CLIP) with the start token at position 0. A unit at characters
``[start, end)`` of that string covers the tokens between the tokenisation of the text before it
and of the text up to its end: CLIP's tokenizer cuts words apart before its BPE merges, so a
prefix that ends between words tokenises as the start of the whole (a trigger word of several
BPE tokens gets all of them). Positions past the truncation are dropped: a unit wholly beyond
token 76 has no tokens, and the attention source then treats its LoRA as global.

SDXL's two text encoders each see the same 77 positions (their states are concatenated along
features, not along the sequence), so one tokenizer's positions index both.
"""
from __future__ import annotations


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids) if text.strip() else 0


def span_tokens(tokenizer, prompt: str, start: int, end: int) -> list[int]:
    """Positions (start token at 0) of the tokens of ``prompt[start:end]``."""
    if not 0 <= start <= end <= len(prompt):
        raise ValueError(f"span {start}:{end} is outside the {len(prompt)}-character prompt")
    first = 1 + _count(tokenizer, prompt[:start])
    last = 1 + _count(tokenizer, prompt[:end])
    limit = tokenizer.model_max_length - 1  # the last position holds the end token
    return [i for i in range(first, last) if i < limit]


def content_tokens(tokenizer, prompt: str) -> list[int]:
    """Positions of all the prompt's own tokens (not the start, end or padding tokens)."""
    return span_tokens(tokenizer, prompt, 0, len(prompt))
