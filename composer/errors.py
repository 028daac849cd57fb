"""The composer's errors; the CLI turns each into one clear message."""
from __future__ import annotations


class LoraError(ValueError):
    """A LoRA that cannot be used with this pipeline; the message says which and why."""


class UnsupportedLoraError(LoraError):
    """A LoRA file in a format (or a variant of one) the composer cannot apply."""
