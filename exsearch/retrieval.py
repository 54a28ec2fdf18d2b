"""BM25 retrieval over passages with bm25s: build, save, load (optionally memory-mapped), search.

An index directory holds the bm25s arrays, `passages.jsonl` (one Passage per line, in index
order) with `passages.offsets.npy` (byte offset of every line, so a memory-mapped index can read
one passage without loading the others), and `exsearch_index.json` (the IndexConfig it was
built with: queries must be stemmed and stop-worded exactly like the corpus).

    retriever = BM25Retriever.build(passages, IndexConfig())   # in memory
    build_index(passage_iter, IndexConfig(), "data/index")      # streamed to disk (big corpora)
    retriever = BM25Retriever.load("data/index", mmap=True)
    hits = retriever.search(["who wrote hamlet", "capital of peru"], k=5)

`load_retriever(directory)` opens any index exsearch builds, BM25 or dense (exsearch.dense, same
folder layout with embeddings instead of the bm25s arrays), by the kind its meta file records.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap as mmap_module
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import bm25s
import numpy as np
import Stemmer
from bm25s.tokenization import Tokenizer
from tqdm.auto import tqdm

from exsearch.bm25_build import build_bm25
from exsearch.config import IndexConfig
from exsearch.schema import Passage

if TYPE_CHECKING:
    from exsearch.dense import DenseRetriever

log = logging.getLogger(__name__)

REBUILD = "rebuild it with `dvc repro index` (or `python -m stages.index`)"
META_FILE = "exsearch_index.json"
PASSAGES_FILE = "passages.jsonl"
OFFSETS_FILE = "passages.offsets.npy"
FORMAT_VERSION = 1
# Progress bars only where a build or a batch of queries takes more than a moment.
PROGRESS_MIN_ITEMS = 20_000


@dataclass(frozen=True)
class Hit:
    """One search result; `rank` is 1-based (1 = best), the number the agent shows as "[1]"."""

    passage: Passage
    score: float
    rank: int


@dataclass(frozen=True)
class IndexStats:
    """What a build did, for logs."""

    passages: int
    terms: int
    seconds: float


def format_passage(p: Passage, index: int | None = None, max_words: int | None = None) -> str:
    """Render a passage for a prompt: `[index] Title: … Content: …`.

    `index` is the 1-based number shown to the model (no prefix when None). `max_words` keeps
    the first words of the text (whitespace folded); the title is never cut.
    """
    text = p.text
    if max_words is not None:
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        text = " ".join(text.split()[:max_words])
    out = f"Title: {p.title} Content: {text}"
    if index is None:
        return out
    if index < 1:
        raise ValueError(f"passage numbers shown to the model are 1-based, got {index}")
    return f"[{index}] {out}"


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


def _index_text(p: Passage) -> str:
    return f"{p.title} {p.text}"


def _index_tokens(
    texts: Iterable[str],
    cfg: IndexConfig,
    show_progress: bool,
    total: int | None = None,
    spill_dir: Path | None = None,
) -> tuple[bm25s.BM25, Tokenizer, float]:
    """Tokenise `texts` (streamed) and build the BM25 matrix; returns (bm25, tokenizer, seconds).

    The matrix is built by `exsearch.bm25_build` (same scores as `bm25s.BM25.index`, about a
    quarter of its peak memory); token ids spill to a temporary file in `spill_dir`.
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


class CorruptIndex(ValueError):
    """An index folder that is there but cannot be read; the message names it and the fix."""


# What numpy, json/orjson (bm25s) and the file system raise on truncated or garbled files.
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError)


@contextlib.contextmanager
def reading_index(directory: Path) -> Iterator[None]:
    """Turn the raw errors of reading a damaged index into one `CorruptIndex` naming the folder."""
    try:
        yield
    except CorruptIndex:
        raise
    except _UNREADABLE as e:
        raise CorruptIndex(
            f"{directory}: the index is unreadable, probably truncated or damaged "
            f"({type(e).__name__}: {e}); {REBUILD}"
        ) from e


class _PassageFile:
    """Passages on disk, read one line at a time through mmap (for memory-mapped indexes).

    Opening checks what is cheap to check whatever the size: the offsets span the file exactly
    (no truncation) and a few passages spread over the file parse; a passage that does not parse
    later raises `CorruptIndex` too.
    """

    SPOT_CHECKS = 16

    def __init__(self, directory: Path):
        self.directory = directory
        self._offsets = np.load(directory / OFFSETS_FILE, mmap_mode="r")
        path = directory / PASSAGES_FILE
        size = path.stat().st_size
        if len(self._offsets) < 2 or int(self._offsets[0]) != 0 or self._offsets[-1] != size:
            raise CorruptIndex(
                f"{directory}: {PASSAGES_FILE} has {size} bytes but {OFFSETS_FILE} says "
                f"{int(self._offsets[-1]) if len(self._offsets) else 0}: the index is truncated "
                f"or damaged; {REBUILD}"
            )
        with open(path, "rb") as f:
            # The mapping stays valid after the file is closed.
            self._mm = mmap_module.mmap(f.fileno(), 0, access=mmap_module.ACCESS_READ)
        for i in np.unique(np.linspace(0, len(self) - 1, self.SPOT_CHECKS).astype(int)):
            self[int(i)]

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> Passage:
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        try:
            return Passage.from_dict(json.loads(self._mm[start:end]))
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptIndex(
                f"{self.directory}: passage {i} in {PASSAGES_FILE} (bytes {start}-{end}) is "
                f"unreadable ({type(e).__name__}: {e}); the index is damaged; {REBUILD}"
            ) from None


def _write_passages(
    passages: Iterable[Passage],
    f: IO[bytes],
    offsets: array,
    text: Callable[[Passage], str] = _index_text,
) -> Iterator[str]:
    """Write each passage as a JSON line while yielding `text(p)` (one pass, no copy)."""
    for p in passages:
        offsets.append(f.tell())
        f.write(json.dumps(p.to_dict(), ensure_ascii=False).encode("utf-8") + b"\n")
        yield text(p)
    offsets.append(f.tell())


def _save_arrays(
    bm25: bm25s.BM25, cfg: IndexConfig, n: int, offsets: array, directory: Path
) -> None:
    bm25.save(str(directory), show_progress=False)
    np.save(directory / OFFSETS_FILE, np.frombuffer(offsets, dtype=np.int64))
    meta = {
        "format": FORMAT_VERSION,
        "kind": "bm25",
        "passages": n,
        "config": cfg.model_dump(mode="json"),
        "bm25s_version": bm25s.__version__,
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


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
    pass a temporary directory (e.g. from `exsearch.io.atomic_path`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    progress = _auto_progress(passages, show_progress)
    total = len(passages) if isinstance(passages, Sequence) else None
    offsets = array("q")
    with open(directory / PASSAGES_FILE, "wb") as f:
        texts = _write_passages(passages, f, offsets)
        bm25, tokenizer, seconds = _index_tokens(texts, cfg, progress, total, directory)
    n = len(offsets) - 1
    _save_arrays(bm25, cfg, n, offsets, directory)
    log.info("indexed %d passages in %.1fs", n, seconds)
    return IndexStats(n, len(tokenizer.get_vocab_dict()), seconds)


def read_index_meta(directory: Path, kind: str | None = None) -> dict[str, Any]:
    """Read an index folder's meta file, checking it exists, its format and (if given) its kind.

    Indexes whose meta names no kind (written before dense retrieval existed) are BM25.
    """
    meta_path = directory / META_FILE
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: no such index folder; build it with `dvc repro index` "
            "(or `python -m stages.index`)"
        )
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path}: not found; {directory} is not an index built by exsearch; {REBUILD}"
        )
    with reading_index(directory):
        meta = json.loads(meta_path.read_bytes())
        if not isinstance(meta, dict):
            raise ValueError(f"{META_FILE} holds {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: index format {meta.get('format')!r}, this code reads "
            f"{FORMAT_VERSION}; {REBUILD}"
        )
    meta.setdefault("kind", "bm25")
    if kind is not None and meta["kind"] != kind:
        raise ValueError(
            f"{directory}: a {meta['kind']} index, not a {kind} one; open it with "
            "exsearch.retrieval.load_retriever, which picks the retriever by kind"
        )
    return meta


def load_retriever(directory: str | Path, *, mmap: bool = False) -> BM25Retriever | DenseRetriever:
    """Open a saved index of any kind (BM25 or dense), as its meta file says; see the loaders."""
    directory = Path(directory)
    kind = read_index_meta(directory)["kind"]
    if kind == "bm25":
        return BM25Retriever.load(directory, mmap=mmap)
    if kind == "dense":
        from exsearch.dense import DenseRetriever  # imports this module: not at the top

        return DenseRetriever.load(directory, mmap=mmap)
    raise ValueError(f"{directory / META_FILE}: unknown index kind {kind!r}; {REBUILD}")


class PassageIndex:
    """What every retriever holds: its passages in index order, in memory or mapped from disk."""

    _passages: Sequence[Passage] | _PassageFile

    def __len__(self) -> int:
        return len(self._passages)

    def iter_passages(self) -> Iterator[Passage]:
        """Every indexed passage in index order, one at a time (streamed from a mapped index)."""
        return (self._passages[i] for i in range(len(self)))

    def _write_passage_file(self, directory: Path) -> array:
        """Write the passages into `directory`; return their byte offsets."""
        offsets = array("q")
        with open(directory / PASSAGES_FILE, "wb") as f:
            for _ in _write_passages(self.iter_passages(), f, offsets):
                pass
        return offsets


class BM25Retriever(PassageIndex):
    """Batched BM25 search that returns whole passages. Build it, or load a saved index."""

    def __init__(
        self, bm25: bm25s.BM25, cfg: IndexConfig, passages: Sequence[Passage] | _PassageFile
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
            (_index_text(p) for p in passages), cfg, progress, len(passages)
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
            store = _PassageFile(directory)
            if len(store) != meta["passages"] or bm25.scores["num_docs"] != meta["passages"]:
                raise CorruptIndex(
                    f"{directory}: {len(store)} passages and {bm25.scores['num_docs']} indexed "
                    f"documents, but {META_FILE} says {meta['passages']}; {REBUILD}"
                )
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
