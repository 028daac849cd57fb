"""The orders ``list`` offers, by name; a module of its own so that the command line can name them
without importing SQLAlchemy (``loraregistry.api.LIST_ORDERS`` maps each to its columns)."""
from __future__ import annotations

# id: registry order; downloads / rating: Civitai's most downloaded / best rated first (its stats).
LIST_SORTS = ("id", "downloads", "rating")
