"""Dense retrieval: sentence-transformers embeddings and exact inner-product search in numpy.

The same surface as `BM25Retriever` (build, save, load with mmap, batched search,
iter_passages, len), so the agent, warm-up and evaluation take either. An index folder holds
the passages as BM25's does (`passages.jsonl` + `passages.offsets.npy`), `embeddings.npy` (one
L2-normalised row per passage, in index order, float32 or float16) and `exsearch_index.json`
(kind "dense" and the IndexConfig: queries must be embedded by the model that embedded the
passages).

    cfg = IndexConfig(kind="dense", dense_model="models/all-MiniLM-L6-v2")
    retriever = DenseRetriever.build(passages, cfg)            # in memory
    build_dense_index(passage_iter, cfg, "data/index")         # streamed to disk (big corpora)
    retriever = DenseRetriever.load("data/index", mmap=True)
    hits = retriever.search(["who wrote hamlet", "capital of peru"], k=5)

Search is exact (cosine similarity, since rows and queries are normalised): the embedding matrix
is read in row chunks, each multiplied by all the batch's queries at once, and a running top-k per
query is kept with argpartition. Memory stays bounded whatever the corpus size, so a memory-mapped
float16 matrix of a few million passages (768 bytes a passage at 384 dimensions) needs no vector
database; the cost is linear in the corpus, dim × passages multiply-adds per query.

sentence-transformers is imported only when a model is loaded: `pip install -e ".[dense]"`.
The default model folder comes from `python scripts/fetch_dense_model.py` (no model hub needed).
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from tqdm.auto import tqdm

from exsearch.config import IndexConfig
from exsearch.retrieval.base import (
    META_FILE,
    OFFSETS_FILE,
    PASSAGES_FILE,
    REBUILD,
    CorruptIndex,
    Hit,
    PassageFile,
    PassageIndex,
    all_finite,
    read_index_meta,
    reading_index,
    write_index_meta,
    write_passages,
)
from exsearch.retrieval.embedding import Encoder, embed, embed_chunks, load_encoder, passage_text
from exsearch.schema import Passage

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
# Search reads at most this many rows at a time (converted to float32: 48 MiB at 384 dims) and
# keeps at most SCORE_BUDGET query × passage scores alive (64 MiB).
SEARCH_CHUNK_ROWS = 32768
SCORE_BUDGET = 1 << 24
# Progress bars only where embedding takes more than a few seconds on a CPU.
PROGRESS_MIN_ITEMS = 2000


@dataclass(frozen=True)
class DenseIndexStats:
    """What a build did, for logs."""

    passages: int
    dim: int
    seconds: float


def _progress(passages: Iterable[Passage], show_progress: bool | None) -> bool:
    if show_progress is not None:
        return show_progress
    return not isinstance(passages, Sequence) or len(passages) >= PROGRESS_MIN_ITEMS


class _NpyRows:
    """Appends rows to a .npy file whose length is unknown until the end.

    numpy pads the header so the first axis can grow in place (GROWTH_AXIS_MAX_DIGITS): a
    header written for (0, dim) has the length of the final one, rewritten when done.
    """

    def __init__(self, f: IO[bytes], dtype: np.dtype):
        self._f, self._dtype = f, dtype
        self.rows, self.dim, self._header = 0, 0, 0

    def _write_header(self) -> int:
        self._f.seek(0)
        header = {
            "descr": np.lib.format.dtype_to_descr(self._dtype),
            "fortran_order": False,
            "shape": (self.rows, self.dim),
        }
        np.lib.format.write_array_header_1_0(self._f, header)
        return self._f.tell()

    def append(self, rows: np.ndarray) -> None:
        if not self.dim:
            self.dim = rows.shape[1]
            self._header = self._write_header()
        elif rows.shape[1] != self.dim:
            raise ValueError(f"embedding size changed from {self.dim} to {rows.shape[1]}")
        self._f.seek(0, 2)
        self._f.write(np.ascontiguousarray(rows, dtype=self._dtype).tobytes())
        self.rows += len(rows)

    def finish(self) -> None:
        if self.rows and self._write_header() != self._header:
            raise RuntimeError("this numpy's .npy header cannot grow in place; upgrade numpy")


def _save_meta(cfg: IndexConfig, n: int, dim: int, directory: Path) -> None:
    meta = {
        "kind": "dense",
        "passages": n,
        "dim": dim,
        "dtype": cfg.dense_dtype,
        "config": cfg.model_dump(mode="json"),
    }
    write_index_meta(directory, meta)


def _as_dense(cfg: IndexConfig | None) -> IndexConfig:
    return (cfg or IndexConfig()).model_copy(update={"kind": "dense"})


def build_dense_index(
    passages: Iterable[Passage],
    cfg: IndexConfig,
    directory: str | Path,
    *,
    encoder: Encoder | None = None,
    show_progress: bool | None = None,
) -> DenseIndexStats:
    """Embed passages straight into `directory`, streaming (never all in memory).

    Passages and embedding rows are written as they come, a chunk at a time. `encoder` defaults
    to `cfg.dense_model`. Writes are not atomic: pass a temporary directory (e.g. from
    `exsearch.files.atomic_path`).
    """
    cfg = _as_dense(cfg)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoder = encoder or load_encoder(cfg.dense_model)
    total = len(passages) if isinstance(passages, Sequence) else None
    t0 = time.perf_counter()
    offsets = array("q")
    bar = tqdm(total=total, desc="Embed passages", disable=not _progress(passages, show_progress))
    with (
        open(directory / PASSAGES_FILE, "wb") as pf,
        open(directory / EMBEDDINGS_FILE, "wb") as ef,
        bar,
    ):
        rows = _NpyRows(ef, np.dtype(cfg.dense_dtype))
        texts = write_passages(passages, pf, offsets, passage_text)
        for chunk in embed_chunks(encoder, texts, cfg.dense_batch_size, bar):
            rows.append(chunk)
        rows.finish()
    if not rows.rows:
        raise ValueError("no passages to index: the corpus is empty")
    np.save(directory / OFFSETS_FILE, np.frombuffer(offsets, dtype=np.int64))
    _save_meta(cfg, rows.rows, rows.dim, directory)
    seconds = time.perf_counter() - t0
    log.info("embedded %d passages (%d dims) in %.1fs", rows.rows, rows.dim, seconds)
    return DenseIndexStats(rows.rows, rows.dim, seconds)


class DenseRetriever(PassageIndex):
    """Batched exact dense search that returns whole passages. Build it, or load a saved index."""

    def __init__(
        self,
        embeddings: np.ndarray,
        cfg: IndexConfig,
        passages: Sequence[Passage] | PassageFile,
        encoder: Encoder | None = None,
    ):
        if embeddings.ndim != 2 or len(embeddings) != len(passages):
            raise ValueError(f"{len(passages)} passages but embeddings of shape {embeddings.shape}")
        self._emb = embeddings
        self.config = cfg
        self._passages = passages
        self._encoder = encoder  # loaded on the first search when None

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self._emb.shape[1]

    @property
    def encoder(self) -> Encoder:
        """The query encoder: the index's model, loaded once when first needed."""
        if self._encoder is None:
            self._encoder = load_encoder(self.config.dense_model)
        return self._encoder

    @classmethod
    def build(
        cls,
        passages: Iterable[Passage],
        cfg: IndexConfig | None = None,
        *,
        encoder: Encoder | None = None,
        show_progress: bool | None = None,
    ) -> DenseRetriever:
        """Embed `passages` (title + text) in memory with `encoder` (default: cfg.dense_model)."""
        cfg = _as_dense(cfg)
        passages = list(passages)
        if not passages:
            raise ValueError("no passages to index: the corpus is empty")
        encoder = encoder or load_encoder(cfg.dense_model)
        t0 = time.perf_counter()
        progress = _progress(passages, show_progress)
        with tqdm(total=len(passages), desc="Embed passages", disable=not progress) as bar:
            texts = (passage_text(p) for p in passages)
            chunks = embed_chunks(encoder, texts, cfg.dense_batch_size, bar)
            emb = np.concatenate([c.astype(cfg.dense_dtype) for c in chunks])
        log.info("embedded %d passages in %.1fs", len(passages), time.perf_counter() - t0)
        return cls(emb, cfg, passages, encoder)

    def save(self, directory: str | Path) -> None:
        """Write the embeddings, the passages and the settings to `directory` (not atomic)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        offsets = self._write_passage_file(directory)
        np.save(directory / OFFSETS_FILE, np.frombuffer(offsets, dtype=np.int64))
        np.save(directory / EMBEDDINGS_FILE, np.asarray(self._emb, dtype=self.config.dense_dtype))
        _save_meta(self.config, len(self), self.dim, directory)

    @classmethod
    def load(
        cls, directory: str | Path, *, mmap: bool = False, encoder: Encoder | None = None
    ) -> DenseRetriever:
        """Load a saved index; `mmap=True` maps the embeddings and passages instead of reading.

        The query encoder (`encoder`, else the index's `dense_model`) loads on the first search.
        """
        directory = Path(directory)
        meta = read_index_meta(directory, "dense")
        with reading_index(directory):
            cfg = IndexConfig.model_validate(meta["config"])
            emb = np.load(directory / EMBEDDINGS_FILE, mmap_mode="r" if mmap else None)
            store = PassageFile(directory)
            if emb.shape != (meta["passages"], meta["dim"]) or len(store) != meta["passages"]:
                raise CorruptIndex(
                    f"{directory}: {len(store)} passages and embeddings of shape {emb.shape}, "
                    f"but {META_FILE} says {meta['passages']} × {meta['dim']}; {REBUILD}"
                )
            # Read into memory: one pass says every row is finite. Mapped: skipped, as for
            # BM25 (a pass would read the whole matrix at every open); `verify` hashes it.
            if not mmap and not all_finite(emb, SEARCH_CHUNK_ROWS):
                raise CorruptIndex(
                    f"{directory / EMBEDDINGS_FILE}: an embedding is not finite: the index "
                    f"is damaged; {REBUILD}"
                )
            passages = store if mmap else [store[i] for i in range(len(store))]
            return cls(emb, cfg, passages, encoder)

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-k passages by cosine similarity for every query of a batch.

        Returns min(k, len(self)) hits per query, best first; equal scores are ordered by index
        position. A blank query gets [] (as with BM25, where it matches nothing).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if isinstance(queries, str):
            raise TypeError("search() takes a list of queries, not a single string")
        results: list[list[Hit]] = [[] for _ in queries]
        live = [i for i, q in enumerate(queries) if q.strip()]
        if not live:
            return results
        q = embed(self.encoder, [queries[i] for i in live], self.config.dense_batch_size)
        if q.shape[1] != self.dim:
            raise ValueError(
                f"index.dense_model {self.config.dense_model!r} gives {q.shape[1]}-dim queries "
                f"but the index holds {self.dim}-dim passages: use the model it was built with"
            )
        scores, ids = self._top_k(q, min(k, len(self)))
        for qi, s_row, d_row in zip(live, scores.tolist(), ids.tolist(), strict=True):
            results[qi] = [
                Hit(self._passages[d], s, rank)
                for rank, (s, d) in enumerate(zip(s_row, d_row, strict=True), 1)
            ]
        return results

    def _top_k(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, passage indices), each (queries × k), best first, by chunked exact search."""
        step = max(1, min(SEARCH_CHUNK_ROWS, SCORE_BUDGET // len(q)))
        best_s = np.empty((len(q), 0), dtype=np.float32)
        best_i = np.empty((len(q), 0), dtype=np.int64)
        for start in range(0, len(self), step):
            block = np.asarray(self._emb[start : start + step], dtype=np.float32)
            s = q @ block.T
            s, i = _keep_best(s, np.broadcast_to(np.arange(start, start + len(block)), s.shape), k)
            best_s, best_i = _keep_best(np.hstack([best_s, s]), np.hstack([best_i, i]), k)
        order = np.lexsort((best_i, -best_s), axis=1)
        return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def _keep_best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest-scoring columns of every row (unordered)."""
    if scores.shape[1] <= k:
        return scores, ids
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
