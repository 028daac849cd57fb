"""Split a text-to-image prompt into the phrases that name things, and drop the boilerplate.

Prompts in this field are comma-separated tag lists with quality boilerplate, A1111 weights and LoRA
tags, and they often name several subjects at once; a single embedding of the whole prompt finds only
some of them, so retrieval works phrase by phrase.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from registry.lora_tags import TAG
from registry.text import normalize_word

WEIGHT = re.compile(r":\s*-?\d+(\.\d+)?\s*(?=[)\]}])")
SPLIT = re.compile(r"[,;\n|]+|\bBREAK\b|\s+\band\b\s+|\s+\bwith\b\s+", re.I)
LEADING = re.compile(r"^(a|an|the|some)\s+", re.I)

BOILERPLATE = frozenset(
    normalize_word(w)
    for w in """masterpiece, best quality, high quality, highest quality, top quality, amazing quality, good quality,
    normal quality, low quality, worst quality, ultra detailed, ultra-detailed, extremely detailed, highly detailed,
    very detailed, detailed, intricate details, intricate, 8k, 4k, 2k, 8k uhd, uhd, hd, hdr, raw photo, raw, dslr,
    absurdres, highres, hires, high resolution, sharp focus, official art, award winning, award-winning,
    professional, photorealistic, realistic, photo, cinematic, cinematic lighting, soft lighting, film grain,
    depth of field, bokeh, beautiful, perfect, extremely detailed cg unity 8k wallpaper, wallpaper, score_9,
    score_8_up, score_7_up, solo, looking at viewer""".split(",")
)


@dataclass(frozen=True)
class Phrase:
    text: str  # as written (cleaned of weights)
    norm: str  # normalised, for lexical matching
    boilerplate: bool


def decompose(prompt: str) -> list[Phrase]:
    text = TAG.sub(" ", prompt)
    text = WEIGHT.sub("", text)
    text = text.replace("\\(", "\0").replace("\\)", "\1")
    text = re.sub(r"[(){}\[\]]", " ", text).replace("\0", "(").replace("\1", ")")
    phrases: list[Phrase] = []
    seen: set[str] = set()
    for part in SPLIT.split(text):
        part = LEADING.sub("", " ".join(part.split())).strip(" .:")
        norm = normalize_word(part)
        if not norm or norm in seen:
            continue
        seen.add(norm)
        phrases.append(Phrase(part, norm, norm in BOILERPLATE))
    return phrases


def ngrams(norm: str, max_n: int = 6) -> list[str]:
    words = norm.split()
    return [" ".join(words[i : i + n]) for n in range(min(max_n, len(words)), 0, -1) for i in range(len(words) - n + 1)]
