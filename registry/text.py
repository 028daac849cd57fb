"""Small text helpers: HTML to plain text, normalisation of words for matching."""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_BLOCK_TAGS = {"p", "br", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "blockquote", "pre", "hr"}
_SPACES = re.compile(r"[ \t\r\f\v]+")
_NEWLINES = re.compile(r"\n\s*\n+")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def clean_text(value: str) -> str:
    """Text that every database stores: no NUL characters (PostgreSQL refuses them in text and
    JSON) and no lone surrogates (not encodable as UTF-8), whatever a hostile file put there."""
    if value.isascii() and "\x00" not in value:
        return value
    return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def html_to_text(value: str | None) -> str | None:
    """Civitai descriptions are HTML; keep their words and paragraph breaks, drop the markup."""
    if not value:
        return None
    if "<" not in value and "&" not in value:
        return value.strip() or None
    parser = _TextExtractor()
    try:
        parser.feed(value)
        parser.close()
        text = "".join(parser.parts)
    except Exception:  # malformed markup: fall back to a blunt strip
        text = html.unescape(re.sub(r"<[^>]*>", " ", value))
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _NEWLINES.sub("\n\n", text).strip() or None


def normalize_word(word: str) -> str:
    """Lower case, A1111 escapes and weights removed, spaces collapsed: how prompts are compared."""
    word = word.replace("\\(", "(").replace("\\)", ")").lower()
    word = re.sub(r"[_\s]+", " ", word)
    return word.strip(" ,.;:")
