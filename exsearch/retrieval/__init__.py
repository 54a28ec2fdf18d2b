"""Retrieval: BM25 or dense search over one passage store, opened by the kind an index records.

BM25 (`bm25.py`, bm25s) or dense (`dense.py`, sentence-transformers) over the same passage
store (`base.py`). `load_retriever(directory)` opens any index exsearch builds, by the
kind its meta file records; every stage opens its index that way.
"""

from __future__ import annotations

from pathlib import Path

from exsearch.retrieval.base import (
    FORMAT_VERSION,
    META_FILE,
    OFFSETS_FILE,
    PASSAGES_FILE,
    REBUILD,
    CorruptIndex,
    Hit,
    PassageIndex,
    format_passage,
    read_index_meta,
)
from exsearch.retrieval.bm25 import BM25Retriever, IndexStats, build_index, make_tokenizer
from exsearch.retrieval.dense import DenseIndexStats, DenseRetriever, build_dense_index

__all__ = [
    "FORMAT_VERSION",
    "META_FILE",
    "OFFSETS_FILE",
    "PASSAGES_FILE",
    "REBUILD",
    "BM25Retriever",
    "CorruptIndex",
    "DenseIndexStats",
    "DenseRetriever",
    "Hit",
    "IndexStats",
    "PassageIndex",
    "build_dense_index",
    "build_index",
    "format_passage",
    "load_retriever",
    "make_tokenizer",
    "read_index_meta",
]


def load_retriever(directory: str | Path, *, mmap: bool = False) -> BM25Retriever | DenseRetriever:
    """Open a saved index of any kind (BM25 or dense), as its meta file says; see the loaders."""
    directory = Path(directory)
    kind = read_index_meta(directory)["kind"]
    if kind == "bm25":
        return BM25Retriever.load(directory, mmap=mmap)
    if kind == "dense":
        return DenseRetriever.load(directory, mmap=mmap)
    raise ValueError(f"{directory / META_FILE}: unknown index kind {kind!r}; {REBUILD}")
