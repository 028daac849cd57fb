"""A1111's extra-network tags in prompts: ``<lora:name:0.8>``, ``<lyco:name>``, ``<hypernet:name:1>``.

One grammar for the search (which strips them before matching phrases) and the composer (which
loads the LoRAs they name).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

TAG = re.compile(r"<(lora|lyco|hypernet):([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.I)


@dataclass(frozen=True)
class PromptTag:
    kind: str  # lora | lyco | hypernet (lower case)
    name: str
    weight: float | None  # None when absent or unreadable
    start: int  # span of the tag in the prompt
    end: int


def prompt_tags(prompt: str) -> list[PromptTag]:
    """The tags of a prompt, in order."""
    out = []
    for m in TAG.finditer(prompt):
        weight = None
        if m.group(3):
            try:
                weight = float(m.group(3))
            except ValueError:
                weight = None
        out.append(PromptTag(m.group(1).lower(), m.group(2).strip(), weight, m.start(), m.end()))
    return out


def strip_tags(prompt: str) -> str:
    """The prompt without its tags, whitespace and stray commas tidied."""
    text = re.sub(r"\s{2,}", " ", TAG.sub(" ", prompt))
    text = re.sub(r"\s+,", ",", text)
    text = re.sub(r",(\s*,)+", ",", text)
    return text.strip().strip(",").strip()
