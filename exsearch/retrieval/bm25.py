"""BM25 retrieval over passages with bm25s: build, save, load (optionally memory-mapped), search.

An index folder holds the bm25s arrays next to the passages and meta file of `base.py`; the meta
file records the IndexConfig it was built with (queries must be stemmed and stop-worded exactly
like the corpus).

    retriever = BM25Retriever.build(passages, IndexConfig())   # in memory
    build_index(passage_iter, IndexConfig(), "data/index")      # streamed to disk (big corpora)
    retriever = BM25Retriever.load("data/index", mmap=True)
    hits = retriever.search(["who wrote hamlet", "capital of peru"], k=5)
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from bm25s.tokenization import Tokenizer
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
    index_text,
    read_index_meta,
    reading_index,
    write_index_meta,
    write_passages,
)
from exsearch.retrieval.bm25_build import build_bm25
from exsearch.schema import Passage

log = logging.getLogger(__name__)


# Progress bars only where a build or a batch of queries takes more than a moment.
PROGRESS_MIN_ITEMS = 20_000


@dataclass(frozen=True)
class IndexStats:
    """What a build did, for logs."""

    passages: int
    terms: int
    seconds: float


def make_tokenizer(cfg: IndexConfig) -> Tokenizer:
    """Make the bm25s tokenizer for `cfg`; unknown stemmer or stop-word names list the choices."""
    stemmer = None
    if cfg.stemmer is not None:
        try:
            stemmer = Stemmer.Stemmer(cfg.stemmer)
        except KeyError:
            raise ValueError(
                f"index.stemmer: unknown PyStemmer language {cfg.stemmer!r}; "
                f"choose one of {', '.join(Stemmer.algorithms())} or null"
            ) from None
    try:
        return Tokenizer(lower=True, stopwords=cfg.stopwords, stemmer=stemmer)
    except ValueError:
        raise ValueError(
            f"index.stopwords: unknown bm25s stop-word list {cfg.stopwords!r} "
            "(e.g. 'en', 'en_plus', 'de', 'fr') or null"
        ) from None


def _index_tokens(
    texts: Iterable[str],
    cfg: IndexConfig,
    show_progress: bool,
    total: int | None = None,
    spill_dir: Path | None = None,
) -> tuple[bm25s.BM25, Tokenizer, float]:
    """Tokenise `texts` (streamed) and build the BM25 matrix; returns (bm25, tokenizer, seconds).

    The matrix is built by `bm25_build` (same scores as `bm25s.BM25.index`, about a quarter of
    its peak memory); token ids spill to a temporary file in `spill_dir`.
    """
    t0 = time.perf_counter()
    tokenizer = make_tokenizer(cfg)
    stream = tokenizer.streaming_tokenize(texts, update_vocab=True, allow_empty=True)
    bar = tqdm(stream, desc="Tokenize passages", total=total, disable=not show_progress)
    bm25 = bm25s.BM25(method=cfg.method, k1=cfg.k1, b=cfg.b)
    build_bm25(bar, None, bm25, spill_dir=spill_dir, vocab_fn=tokenizer.get_vocab_dict)
    log.info(
        "indexed %d passages, %d terms", bm25.scores["num_docs"], len(tokenizer.get_vocab_dict())
    )
    return bm25, tokenizer, time.perf_counter() - t0


def _auto_progress(passages: Iterable[Passage], show_progress: bool | None) -> bool:
    if show_progress is not None:
        return show_progress
    n = len(passages) if isinstance(passages, Sequence) else None
    return n is None or n >= PROGRESS_MIN_ITEMS


def _save_arrays(
    bm25: bm25s.BM25, cfg: IndexConfig, n: int, offsets: array, directory: Path
) -> None:
    bm25.save(str(directory), show_progress=False)
    np.save(directory / OFFSETS_FILE, np.frombuffer(offsets, dtype=np.int64))
    meta = {
        "kind": "bm25",
        "passages": n,
        "config": cfg.model_dump(mode="json"),
        "bm25s_version": bm25s.__version__,
    }
    write_index_meta(directory, meta)


def build_index(
    passages: Iterable[Passage],
    cfg: IndexConfig,
    directory: str | Path,
    *,
    show_progress: bool | None = None,
) -> IndexStats:
    """Build an index straight into `directory`, streaming passages (never all in memory).

    Passages are written to disk as they are tokenised, so only their token ids are held;
    this is the path for corpora too big for `BM25Retriever.build`. Writes are not atomic:
    pass a temporary directory (e.g. from `exsearch.files.atomic_path`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    progress = _auto_progress(passages, show_progress)
    total = len(passages) if isinstance(passages, Sequence) else None
    offsets = array("q")
    with open(directory / PASSAGES_FILE, "wb") as f:
        texts = write_passages(passages, f, offsets)
        bm25, tokenizer, seconds = _index_tokens(texts, cfg, progress, total, directory)
    n = len(offsets) - 1
    _save_arrays(bm25, cfg, n, offsets, directory)
    log.info("indexed %d passages in %.1fs", n, seconds)
    return IndexStats(n, len(tokenizer.get_vocab_dict()), seconds)


# Elements checked at a time: bounded memory over memory-mapped arrays of any size.
_CHECK_CHUNK = 1 << 22


def _score_problem(scores: dict, n_terms: int, *, entries: bool) -> str | None:
    """What is wrong with bm25s's CSC score matrix (one column per term), or None.

    The column offsets (one per term) are always checked; the entries (scores finite,
    documents in range: a pass over the whole matrix) only with `entries`.
    """
    indptr, indices, data = scores["indptr"], scores["indices"], scores["data"]
    if len(indptr) != n_terms + 1:
        return f"{len(indptr)} column offsets for {n_terms} terms"
    if indptr[0] != 0 or indptr[-1] != len(indices) or len(indices) != len(data):
        return "the column offsets do not span the score arrays"
    for start in range(0, len(indptr) - 1, _CHECK_CHUNK):
        if (np.diff(indptr[start : start + _CHECK_CHUNK + 1]) < 0).any():
            return "the column offsets decrease"
    if not entries:
        return None
    if not all_finite(data, _CHECK_CHUNK):
        return "a score is not finite"
    for start in range(0, len(indices), _CHECK_CHUNK):
        docs = indices[start : start + _CHECK_CHUNK]
        if docs.min() < 0 or docs.max() >= scores["num_docs"]:
            return "a document number is out of range"
    return None


def _check_scores(directory: Path, scores: dict, n_terms: int, *, mmap: bool) -> None:
    """Refuse score arrays that load but would rank garbage: their bounds, at every open.

    The hashes catch any change but are checked only where asked (`verify`); this catches the
    damage that breaks search wherever the index is opened: column offsets that do not span the
    arrays or decrease, and, for an index read into memory, non-finite scores and documents out
    of range. A memory-mapped index skips that pass over its entries, which would read the
    whole matrix at every open (6 GB at 5M passages) where mapping reads only what queries touch.
    """
    problem = _score_problem(scores, n_terms, entries=not mmap)
    if problem:
        raise CorruptIndex(f"{directory}: the BM25 score arrays are damaged ({problem}); {REBUILD}")


class BM25Retriever(PassageIndex):
    """Batched BM25 search that returns whole passages. Build it, or load a saved index."""

    def __init__(
        self, bm25: bm25s.BM25, cfg: IndexConfig, passages: Sequence[Passage] | PassageFile
    ):
        self._bm25 = bm25
        self.config = cfg
        self._passages = passages
        # Queries reuse the corpus tokenizer's rules and the index vocabulary (the bm25s vocab
        # is the stem → id map when stemming, the word → id map otherwise); with update_vocab
        # False, words unknown to the index are dropped.
        self._tokenizer = make_tokenizer(cfg)
        if self._tokenizer.stemmer is not None:
            self._tokenizer.stem_to_sid = bm25.vocab_dict
        else:
            self._tokenizer.word_to_id = bm25.vocab_dict

    @classmethod
    def build(
        cls,
        passages: Iterable[Passage],
        cfg: IndexConfig | None = None,
        *,
        show_progress: bool | None = None,
    ) -> BM25Retriever:
        """Index `passages` (title + text) in memory."""
        cfg = cfg or IndexConfig()
        passages = list(passages)
        progress = _auto_progress(passages, show_progress)
        bm25, _, seconds = _index_tokens(
            (index_text(p) for p in passages), cfg, progress, len(passages)
        )
        log.info("indexed %d passages in %.1fs", len(passages), seconds)
        return cls(bm25, cfg, passages)

    def save(self, directory: str | Path) -> None:
        """Write the index, its passages and its settings to `directory` (not atomic)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        offsets = self._write_passage_file(directory)
        _save_arrays(self._bm25, self.config, len(self), offsets, directory)

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = False) -> BM25Retriever:
        """Load a saved index; `mmap=True` maps the score arrays and passages instead of reading.

        With mmap the index uses little resident memory and pages in what queries touch: the
        way to serve a corpus of tens of millions of passages.
        """
        directory = Path(directory)
        meta = read_index_meta(directory, "bm25")
        with reading_index(directory):
            cfg = IndexConfig.model_validate(meta["config"])
            bm25 = bm25s.BM25.load(
                str(directory), mmap=mmap, load_corpus=False, show_progress=False
            )
            store = PassageFile(directory)
            if len(store) != meta["passages"] or bm25.scores["num_docs"] != meta["passages"]:
                raise CorruptIndex(
                    f"{directory}: {len(store)} passages and {bm25.scores['num_docs']} indexed "
                    f"documents, but {META_FILE} says {meta['passages']}; {REBUILD}"
                )
            _check_scores(directory, bm25.scores, len(bm25.vocab_dict), mmap=mmap)
            passages = store if mmap else [store[i] for i in range(len(store))]
            return cls(bm25, cfg, passages)

    def search(self, queries: Sequence[str], k: int, *, n_threads: int = 0) -> list[list[Hit]]:
        """Top-k passages for every query of a batch.

        Returns at most k hits per query, best first, ties broken by index order so results are
        deterministic. Passages scoring 0 are left out (for lucene, robertson and atire: those
        sharing no term with the query), so a query with no indexed term (empty, only
        stop-words, only unknown words) gets [] and a rare one may get fewer than k.
        `n_threads` > 0 scores queries in that many threads (numpy releases the GIL).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if isinstance(queries, str):
            raise TypeError("search() takes a list of queries, not a single string")
        k = min(k, len(self))
        token_ids = self._tokenizer.tokenize(
            list(queries),
            update_vocab=False,
            return_as="ids",
            show_progress=False,
            allow_empty=False,
        )
        live = [i for i, ids in enumerate(token_ids) if ids]
        results: list[list[Hit]] = [[] for _ in queries]
        if n_threads > 0 and len(live) > 1:
            with ThreadPoolExecutor(n_threads) as pool:
                tops = list(pool.map(lambda i: self._top_k(token_ids[i], k), live))
        else:
            tops = [self._top_k(token_ids[i], k) for i in live]
        for qi, top in zip(live, tops, strict=True):
            results[qi] = [Hit(self._passages[d], s, rank) for rank, (s, d) in enumerate(top, 1)]
        return results

    def _top_k(self, ids: list[int], k: int) -> list[tuple[float, int]]:
        """(score, passage index) of the k best passages with a positive score, best first."""
        scores = self._bm25.get_scores_from_ids(ids)
        # Not bm25s's retrieve(): its top-k, np.argpartition(scores, -k), is pathologically slow
        # when most scores tie at 0 (30 ms a query at 1M passages); picking the k smallest of
        # -scores is the same selection and takes 1 ms.
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        pairs = zip(scores[top].tolist(), top.tolist(), strict=True)
        return sorted(((s, d) for s, d in pairs if s > 0), key=lambda t: (-t[0], t[1]))
