"""Text embeddings for dense retrieval: the encoder, what a passage embeds as, normalised rows.

Kept apart from the index (`dense.py`) so that building, searching and the encoder each stay
small; sentence-transformers is imported only when a model is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from exsearch.schema import Passage

# Passages per encode() call: one progress step; sentence-transformers sorts each call's texts
# by length, so larger calls pad less.
ENCODE_CHUNK = 4096


class Encoder(Protocol):
    """What is needed of a sentence-transformers model: batched text → embedding rows."""

    def encode(self, sentences: list[str], **kwargs: Any) -> Any: ...


def load_encoder(name_or_path: str) -> Encoder:
    """Load a sentence-transformers model (local folder or hub name) on the best device."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError(
            "index.kind 'dense' needs sentence-transformers: pip install -e \".[dense]\""
        ) from None
    try:
        return SentenceTransformer(name_or_path)
    except OSError as e:
        raise OSError(
            f"index.dense_model: cannot load {name_or_path!r}: {e}\n"
            "Fetch the default with `python scripts/fetch_dense_model.py`, or name a local "
            "sentence-transformers folder or a hub model."
        ) from e


def passage_text(p: Passage) -> str:
    """The text embedded for a passage: its title, then its text."""
    return f"{p.title}: {p.text}" if p.title else p.text


def embed(encoder: Encoder, texts: list[str], batch_size: int) -> np.ndarray:
    """L2-normalised float32 embeddings of `texts`, one row each (zero rows stay zero)."""
    out = encoder.encode(
        texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True
    )
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or len(out) != len(texts):
        raise ValueError(f"the encoder returned shape {out.shape} for {len(texts)} texts")
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def embed_chunks(
    encoder: Encoder, texts: Iterable[str], batch_size: int, bar: tqdm
) -> Iterator[np.ndarray]:
    """`embed` over `texts` in chunks of ENCODE_CHUNK, one progress step each."""
    it = iter(texts)
    while chunk := list(islice(it, ENCODE_CHUNK)):
        yield embed(encoder, chunk, batch_size)
        bar.update(len(chunk))
