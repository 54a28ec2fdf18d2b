"""Build a bm25s index in bounded memory, for corpora of tens of millions of passages.

bm25s's own `BM25.index` keeps one Python list of token ids per document and builds its CSC
matrix by sorting every (document, term) pair packed into int64, with several temporaries of the
same length: about 36 bytes per pair at the peak, 3 GiB per million 100-word passages. Here:

1. token ids stream to an unnamed temporary file (4 bytes each) in the order they come, document
   lengths go to an int32 array, and each term's document frequency is counted chunk by chunk;
2. the final arrays (float32 scores and int32 document numbers, 8 bytes per pair: the index
   itself) are allocated once, sized from those frequencies; every chunk of documents is read
   back, scored and written into its terms' slots. Documents come in order, so each term's
   documents stay sorted, as bm25s stores them.

Peak memory ≈ 8 bytes × (document, distinct term) pairs + 4 bytes × documents + the tokenizer's
vocabulary + one chunk (`CHUNK_TOKENS`). Scores use bm25s's own formulas (its scoring helpers),
so the arrays equal what `BM25.index` builds from the same token ids.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

import bm25s
import numpy as np
from bm25s.scoring import (
    _build_idf_array,
    _build_nonoccurrence_array,
    _select_idf_scorer,
    _select_tfc_scorer,
)

# Token ids per chunk: the int64 keys, their sort and the float64 scores take ~100 bytes a
# token at the peak, so ~100 MiB whatever the corpus size.
CHUNK_TOKENS = 1_000_000


def _pairs(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(term, document within the chunk, term frequency) per distinct pair, sorted by term, doc."""
    n_docs = len(lengths)
    docs = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
    keys, tf = np.unique(tokens.astype(np.int64) * n_docs + docs, return_counts=True)
    return keys // n_docs, keys % n_docs, tf


def _grown(counts: np.ndarray, n: int) -> np.ndarray:
    return counts if len(counts) >= n else np.pad(counts, (0, n - len(counts)))


def _token_chunks(doc_token_ids: Iterable[Iterable[int]]) -> Iterator[list[np.ndarray]]:
    """Each document's token ids as an int32 array, grouped into chunks of ~`CHUNK_TOKENS`.

    Lazy: a chunk is yielded as soon as it is full, so the caller spills it before the next
    documents are read (and tokenised).
    """
    buf: list[np.ndarray] = []
    buf_tokens = 0
    for ids in doc_token_ids:
        arr = np.asarray(ids, dtype=np.int32).reshape(-1)
        buf.append(arr)
        buf_tokens += len(arr)
        if buf_tokens >= CHUNK_TOKENS:
            yield buf
            buf, buf_tokens = [], 0
    if buf:
        yield buf


def _spill_tokens(
    doc_token_ids: Iterable[Iterable[int]], spill: IO[bytes]
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], np.ndarray]:
    """First pass: write every token id to `spill` (int32, in order), counting what scores need.

    Returns (document lengths (n_docs,) int32, chunks as (first doc, end doc, first token, end
    token), document frequency of every term id seen (max id + 1,) int64).

    Raises:
        ValueError: no documents.
    """
    lengths = bytearray()  # int32 per document, grown without per-item objects
    chunks: list[tuple[int, int, int, int]] = []
    df = np.zeros(0, dtype=np.int64)
    n_docs = n_tokens = 0
    for buf in _token_chunks(doc_token_ids):
        chunk_lengths = np.fromiter((len(a) for a in buf), dtype=np.int32, count=len(buf))
        tokens = np.concatenate(buf)
        spill.write(tokens.tobytes())
        terms = _pairs(tokens, chunk_lengths)[0]
        if len(terms):
            df = _grown(df, int(terms[-1]) + 1)
            df[: int(terms[-1]) + 1] += np.bincount(terms)
        lengths.extend(chunk_lengths.tobytes())
        chunks.append((n_docs, n_docs + len(buf), n_tokens, n_tokens + len(tokens)))
        n_docs, n_tokens = n_docs + len(buf), n_tokens + len(tokens)
    if n_docs == 0:
        raise ValueError("no passages to index: the corpus is empty")
    return np.frombuffer(lengths, dtype=np.int32), chunks, df


class _TermScorers(NamedTuple):
    """bm25s's scoring pieces for one corpus's document frequencies."""

    idf: np.ndarray  # (n_vocab,)
    tfc: Callable[..., np.ndarray]  # the method's term-frequency component
    nonocc: np.ndarray | None  # (n_vocab,) for the methods that subtract it (bm25l, bm25+)


def _term_scorers(bm25: bm25s.BM25, df: np.ndarray, n_docs: int, avg_len: float) -> _TermScorers:
    """bm25s's idf, term-frequency scorer and non-occurrence scores for these frequencies."""
    df_dict = dict(enumerate(df.tolist()))
    idf = _build_idf_array(df_dict, n_docs, _select_idf_scorer(bm25.idf_method), bm25.dtype)
    tfc = _select_tfc_scorer(bm25.method)
    nonocc = None
    if bm25.method in bm25.methods_requiring_nonoccurrence:
        nonocc = _build_nonoccurrence_array(
            doc_frequencies=df_dict,
            n_docs=n_docs,
            compute_idf_fn=_select_idf_scorer(bm25.idf_method),
            calculate_tfc_fn=tfc,
            l_d=avg_len,
            l_avg=avg_len,
            k1=bm25.k1,
            b=bm25.b,
            delta=bm25.delta,
            dtype=bm25.dtype,
        )
    return _TermScorers(idf, tfc, nonocc)


def _fill_matrix(
    bm25: bm25s.BM25,
    spill: IO[bytes],
    chunks: list[tuple[int, int, int, int]],
    doc_len: np.ndarray,
    df: np.ndarray,
    avg_len: float,
    scorers: _TermScorers,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Second pass: score every chunk read back from `spill` into the CSC arrays, allocated once.

    Returns (data, indices, indptr): per term, its documents' scores and numbers, in document
    order, as bm25s stores them. `df` covers the whole vocabulary.
    """
    idf, tfc, nonocc = scorers
    n_vocab = len(df)
    indptr = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    nnz = int(indptr[-1])
    data = np.empty(nnz, dtype=bm25.dtype)
    indices = np.empty(nnz, dtype=bm25.int_dtype)
    heads = indptr[:-1].copy()  # next free slot of every term
    for d0, d1, t0, t1 in chunks:
        spill.seek(4 * t0)
        tokens = np.fromfile(spill, dtype=np.int32, count=t1 - t0)
        terms, docs, tf = _pairs(tokens, doc_len[d0:d1])
        # Same arithmetic as bm25s (float32 counts, float64 lengths), so the same floats.
        scores = idf[terms] * tfc(
            tf_array=tf.astype(bm25.dtype),
            l_d=doc_len[d0:d1][docs].astype(np.float64),
            l_avg=np.float64(avg_len),
            k1=bm25.k1,
            b=bm25.b,
            delta=bm25.delta,
        )
        if nonocc is not None:
            scores -= nonocc[terms]
        # Pairs are sorted by term: the k-th pair of a term's run goes to that term's
        # next free slot + k.
        starts = np.flatnonzero(np.r_[True, terms[1:] != terms[:-1]])
        run = np.diff(np.r_[starts, len(terms)])
        slots = np.repeat(heads[terms[starts]] - starts, run) + np.arange(len(terms))
        data[slots] = scores
        indices[slots] = docs + d0
        heads[terms[starts]] += run
    return data, indices, indptr


def build_bm25(
    doc_token_ids: Iterable[Iterable[int]],
    vocab: dict[str, int] | None,
    bm25: bm25s.BM25,
    *,
    spill_dir: str | Path | None = None,
    vocab_fn: Callable[[], dict[str, int]] | None = None,
) -> bm25s.BM25:
    """Index documents given as token-id sequences into `bm25` (a fresh `bm25s.BM25`); return it.

    `doc_token_ids` is consumed once, lazily. Term ids must be 0..V-1 where V is the size of the
    vocabulary: `vocab`, or `vocab_fn()` called after the last document (for a tokenizer that
    grows its vocabulary while it streams). Token ids spill to a temporary file in `spill_dir`
    (default: the system temporary folder), removed when done.

    Raises:
        ValueError: no documents.
    """
    with tempfile.TemporaryFile(dir=spill_dir, prefix="exsearch-tokens-") as spill:
        doc_len, chunks, df = _spill_tokens(doc_token_ids, spill)
        vocab = vocab if vocab is not None else vocab_fn()
        n_vocab = len(vocab)
        df = _grown(df, n_vocab)
        if len(df) > n_vocab:
            raise ValueError(f"token id {len(df) - 1} is outside the vocabulary of {n_vocab}")
        avg_len = float(doc_len.mean())
        scorers = _term_scorers(bm25, df, len(doc_len), avg_len)
        data, indices, indptr = _fill_matrix(bm25, spill, chunks, doc_len, df, avg_len, scorers)

    bm25.scores = {"data": data, "indices": indices, "indptr": indptr, "num_docs": len(doc_len)}
    bm25.vocab_dict = vocab
    bm25.unique_token_ids_set = set(vocab.values())
    bm25.nonoccurrence_array = scorers.nonocc
    return bm25
