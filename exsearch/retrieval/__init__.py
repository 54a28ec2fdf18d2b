"""Retrieval: BM25 or dense search over one passage store, opened by the kind an index records.

BM25 (`bm25.py`, bm25s) or dense (`dense.py`, sentence-transformers) over the same passage
store (`base.py`). `INDEX_KINDS` is the one list of kinds: how each is built and opened
(`index.kind` in exsearch.config lists the same names; tests/test_registries.py checks it).
`open_index(directory)` opens any index exsearch builds, by the kind its meta file records;
every stage opens its index that way. A new kind is one module and its entry here (and its
name in `index.kind`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exsearch.retrieval.base import (
    FORMAT_VERSION,
    META_FILE,
    OFFSETS_FILE,
    PASSAGES_FILE,
    REBUILD,
    CorruptIndex,
    Hit,
    PassageIndex,
    Retriever,
    format_passage,
    read_index_meta,
    shown_titles,
)
from exsearch.retrieval.bm25 import BM25Retriever, IndexStats, build_index, make_tokenizer
from exsearch.retrieval.dense import DenseIndexStats, DenseRetriever, build_dense_index

__all__ = [
    "FORMAT_VERSION",
    "INDEX_KINDS",
    "META_FILE",
    "OFFSETS_FILE",
    "PASSAGES_FILE",
    "REBUILD",
    "BM25Retriever",
    "CorruptIndex",
    "DenseIndexStats",
    "DenseRetriever",
    "Hit",
    "IndexKind",
    "IndexStats",
    "PassageIndex",
    "Retriever",
    "build_dense_index",
    "build_index",
    "format_passage",
    "load_retriever",
    "make_tokenizer",
    "open_index",
    "read_index_meta",
    "shown_titles",
]


@dataclass(frozen=True)
class IndexKind:
    """One kind of index: how it is built from passages and opened from its folder.

    Attributes:
        build: (passages, IndexConfig, folder, *, show_progress) → the build's stats dataclass.
        load: (folder, *, mmap) → the retriever.
        progress_min_bytes: Corpora from this size on show a progress bar while building.
    """

    build: Callable[..., Any]
    load: Callable[..., Retriever]
    progress_min_bytes: int


INDEX_KINDS: dict[str, IndexKind] = {
    # tokenising ~20k passages (16 MiB) takes a few seconds
    "bm25": IndexKind(build_index, BM25Retriever.load, progress_min_bytes=16 * 2**20),
    # embedding takes seconds from the first passages on
    "dense": IndexKind(build_dense_index, DenseRetriever.load, progress_min_bytes=0),
}


def load_retriever(directory: str | Path, *, mmap: bool = False, verify: bool = False) -> Retriever:
    """Open a saved index of any kind, as its meta file says; see the kinds' loaders.

    Every open checks each file's size and the arrays' bounds; `verify` also checks every
    file's SHA-256 against the build's (one read of the folder: 20 ms for the default 15 MB
    index, which takes 0.41 s to load; about 1.5 s per GB, README).
    """
    directory = Path(directory)
    kind = read_index_meta(directory, hashes=verify).get("kind")
    if kind not in INDEX_KINDS:
        raise ValueError(f"{directory / META_FILE}: unknown index kind {kind!r}; {REBUILD}")
    return INDEX_KINDS[kind].load(directory, mmap=mmap)


def open_index(directory: str | Path) -> Retriever:
    """Open the index a stage searches; a missing or damaged one raises ValueError saying why.

    Stages call this before loading a model, so a bad index costs seconds, not a model load:
    the hashes are checked (`verify`), and a dense index's query encoder is loaded now.
    """
    try:
        retriever = load_retriever(directory, verify=True)
        if isinstance(retriever, DenseRetriever):
            retriever.encoder  # noqa: B018 (loads it: a missing encoder fails before the LLM)
        return retriever
    except (OSError, ImportError) as e:  # a missing folder or file, or encoder
        raise ValueError(str(e)) from None
