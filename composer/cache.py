"""Bookkeeping for a byte-bounded, least-recently-used cache (no tensors, no I/O).

The composer keeps every LoRA it loads installed on the pipeline as a PEFT adapter, so that a
second job with overlapping LoRAs neither reads the files again nor re-injects the layers. A
retrieve-and-probe run loads K = 16 candidates per prompt, so without a bound the adapters of a
long session would grow without limit; this class decides which to drop, and the loader drops them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Iterable

DEFAULT_CACHE_BYTES = 4 << 30  # 4 GiB: 16 candidates of a 144 MB SD1.5 LoRA fit twice over


class ByteLru:
    """Keys with sizes in bytes, in least-recently-used order.

    ``touch`` records a use; ``evictions(pinned)`` names the keys to drop, oldest first, until the
    total fits ``max_bytes``, never a pinned key (the LoRAs of the job being prepared), so a single
    job larger than the budget still runs and the cache shrinks back after it.
    """

    def __init__(self, max_bytes: int | None = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes (or None for unbounded), got {max_bytes}")
        self.max_bytes = max_bytes
        self._sizes: OrderedDict[Hashable, int] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def keys(self) -> list[Hashable]:
        """Oldest first."""
        return list(self._sizes)

    def touch(self, key: Hashable, nbytes: int | None = None) -> None:
        """Mark ``key`` most recently used (adding it with ``nbytes`` if new)."""
        if key in self._sizes:
            self._sizes.move_to_end(key)
            if nbytes is not None:
                self._sizes[key] = nbytes
        else:
            if nbytes is None:
                raise KeyError(f"{key!r} is not cached; give its size to add it")
            self._sizes[key] = nbytes

    def discard(self, key: Hashable) -> None:
        self._sizes.pop(key, None)

    def evictions(self, pinned: Iterable[Hashable] = ()) -> list[Hashable]:
        """Remove and return the least recently used unpinned keys until the total fits the budget."""
        if self.max_bytes is None:
            return []
        pinned = set(pinned)
        out: list[Hashable] = []
        total = self.total_bytes
        for key in list(self._sizes):
            if total <= self.max_bytes:
                break
            if key in pinned:
                continue
            total -= self._sizes.pop(key)
            out.append(key)
        return out
