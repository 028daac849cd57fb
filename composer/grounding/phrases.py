"""Which part of the prompt asked for each LoRA, and prompts without it.

A prompt is cut into *units*: the pieces between commas (semicolons, newlines, ``|``, ``BREAK``)
and `` and `` ("a kiki on the left and a bouba on the right" names two things). "with" does not cut:
in "a kiki with halo on the left" the halo qualifies the kiki, and removing "a kiki" alone would
leave "with halo on the left", which still asks for an object there.

A LoRA's unit is the one holding its phrase (the search phrase that found it, the text around its
``<lora:>`` tag, or a phrase the user gave), else the one holding one of its trigger words; a LoRA
with none is *global* (it acts everywhere). Pure string functions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_SEPARATOR = re.compile(r"\s*(?:[,;\n|]+|\bBREAK\b)\s*|\s+and\s+", re.I)


@dataclass(frozen=True)
class Unit:
    text: str
    start: int  # character span in the prompt
    end: int


def units(prompt: str) -> list[Unit]:
    """The prompt's units, in order, with their spans (empty pieces dropped)."""
    out, pos = [], 0
    for m in list(_SEPARATOR.finditer(prompt)) + [None]:
        end = m.start() if m else len(prompt)
        piece = prompt[pos:end]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            out.append(Unit(stripped, pos + lead, pos + lead + len(stripped)))
        if m:
            pos = m.end()
    return out


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def mentions(haystack: str, needle: str) -> bool:
    """Word-boundary containment on normalised text ("kiki" is in "a kiki on the left", not in "kikis")."""
    n, h = _norm(needle), _norm(haystack)
    return bool(n) and re.search(rf"(^| ){re.escape(n)}( |$)", h) is not None


def unit_of(prompt: str, phrase: str | None, triggers: tuple[str, ...] = (), at: int | None = None) -> Unit | None:
    """The unit a LoRA belongs to: the one holding character ``at`` (a ``<lora:>`` tag's place),
    else the one containing ``phrase``, else the first one containing a trigger word; None: global."""
    us = units(prompt)
    if at is not None:
        for u in us:
            if u.start <= at <= u.end:
                return u
    if phrase:
        found = [u for u in us if mentions(u.text, phrase)]
        if not found:  # a search phrase can span a cut ("kiki with halo"): the unit of its first word
            first = _norm(phrase).split()
            found = [u for u in us if first and mentions(u.text, first[0])]
        if found:
            return found[0]
    for word in triggers:
        found = [u for u in us if mentions(u.text, word)]
        if found:
            return found[0]
    return None


def without(prompt: str, remove: list[Unit], replace: dict[Unit, str] | None = None) -> str:
    """The prompt with these units (and the separators before them) taken out, and those of
    ``replace`` read as its text."""
    us = units(prompt)
    gone = {(r.start, r.end) for r in remove}
    instead = {(r.start, r.end): text for r, text in (replace or {}).items()}
    pieces: list[str] = []
    for k, u in enumerate(us):
        if (u.start, u.end) in gone:
            continue
        if pieces:  # the separator this unit had in the prompt (", " or " and ")
            sep = prompt[us[k - 1].end:u.start]
            pieces.append(sep if sep.strip() else " ")
        pieces.append(instead.get((u.start, u.end), u.text))
    return "".join(pieces)


def own_prompt(prompt: str, mine: Unit | None, others: list[Unit | None]) -> str:
    """A LoRA's own prompt: the whole prompt without the units that other LoRAs own (its unit and
    the shared context stay). A global LoRA (no unit) keeps the shared context only."""
    theirs = [u for u in others if u is not None and (mine is None or (u.start, u.end) != (mine.start, mine.end))]
    return without(prompt, theirs)
