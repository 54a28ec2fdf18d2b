"""Decoding rules every generation backend follows, so their outputs agree.

Per-sequence seeds make a sample independent of batching and of the other prompts of a call;
stop strings are kept at the end of the text, cut right after the one that ends first.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence


def check_decoding(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Reject decoding settings no backend can honour, before any work is done."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


def sequence_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sequence `index` of a call seeded with `seed` (stable across runs)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_seeds(seed: int | Sequence[int] | None, n: int) -> list[int]:
    """One seed per prompt: derived from one int, given per prompt, or random for None."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    if isinstance(seed, int):
        return [sequence_seed(seed, i) for i in range(n)]
    if len(seed) != n:
        raise ValueError(f"got {len(seed)} seeds for {n} prompts; pass one seed or one per prompt")
    return [int(s) for s in seed]


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """Cut `text` right after the stop string that ends first; (text, None) if none occurs."""
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best[0]):
            best = (i + len(s), s)
    return (text, None) if best is None else (text[: best[0]], best[1])
