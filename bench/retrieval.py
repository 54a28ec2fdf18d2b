"""Retrieval benchmark: batched bm25s search against rank_bm25, then bm25s alone at scale.

    python bench/retrieval.py [--passages 1000000] [--skip-large] [--k 5] [--threads 0]

Part 1, bundled data: the prepared corpus and dev questions (data/prepared, from
`dvc repro prepare`), or, when those are absent, the bundled HotpotQA dev file's own context
paragraphs and questions. Both libraries get the same tokens (bm25s's tokenizer with the
`index` settings of params.yaml). bm25s time is the whole `BM25Retriever.search` call on all
questions (tokenisation included); rank_bm25 time is `get_scores` + top-k per pre-tokenised
question (tokenisation excluded, which favours rank_bm25). Best of several passes, one thread
each unless --threads. Build time includes tokenisation for both; build memory is the
tracemalloc peak of a separate, untimed build (Python and numpy allocations).

Part 2, a synthetic corpus of --passages passages (~100 words drawn from a Zipf law over the
English stop-words plus 500k made-up words, so ~40% of tokens are stop-words as in real text),
written to corpus.jsonl and indexed exactly as the `index` stage does. Each step runs in a fresh
process; memory is that process's RSS (psutil) and peak RSS (getrusage ru_maxrss).

The last line printed is `speedup: <bm25s queries/s ÷ rank_bm25 queries/s>` on the bundled data.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from rank_bm25 import BM25Okapi

from exsearch.config import IndexConfig, load_params
from exsearch.files import read_jsonl
from exsearch.retrieval import BM25Retriever, build_index, make_tokenizer
from exsearch.schema import Passage

PREPARED = Path("data/prepared")
RAW_DEV = Path("data/raw/hotpotqa/dev_subsampled.odd250.jsonl")
MIB = 2**20


# ------------------------------------------------------------------------------ data
NO_DATA = (
    f"no bundled data: neither {PREPARED}/corpus.jsonl nor {RAW_DEV} exists. Run "
    "`dvc repro prepare` from the project root first (the synthetic part needs no data)."
)


def load_bundled() -> tuple[list[Passage], list[str], str] | None:
    """Passages and questions: prepared data if present, else the raw HotpotQA dev file."""
    corpus, dev = PREPARED / "corpus.jsonl", PREPARED / "dev.jsonl"
    if corpus.is_file() and dev.is_file():
        passages = [Passage.from_dict(r) for r in read_jsonl(corpus)]
        questions = [r["question"] for r in read_jsonl(dev)]
        return passages, questions, f"{corpus} + {dev}"
    if not RAW_DEV.is_file():
        return None
    passages, questions, seen = [], [], set()
    for row in read_jsonl(RAW_DEV):
        questions.append(row["question_text"])
        for c in row["contexts"]:
            key = (c["title"], c["paragraph_text"])
            if key not in seen:
                seen.add(key)
                passages.append(Passage(str(len(passages)), c["title"], c["paragraph_text"]))
    note = f"{RAW_DEV} contexts (data/prepared absent: run `dvc repro prepare` for the full corpus)"
    return passages, questions, note


def best_time(fn: Callable[[], object], passes: int) -> float:
    """Shortest wall time of `passes` calls."""
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def traced_memory(fn: Callable[[], object]) -> tuple[float, float]:
    """(peak, kept) traced allocation of one call in MiB; kept = what its result still holds."""
    tracemalloc.start()
    result = fn()  # noqa: F841 (kept alive until measured)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / MIB, kept / MIB


# ------------------------------------------------------------------------------ part 1
def rank_bm25_build(texts: list[str], cfg: IndexConfig) -> tuple[BM25Okapi, object]:
    tok = make_tokenizer(cfg)
    corpus_tokens = tok.tokenize(texts, update_vocab=True, return_as="string", show_progress=False)
    return BM25Okapi(corpus_tokens, k1=cfg.k1, b=cfg.b), tok


def rank_bm25_search(bm: BM25Okapi, query_tokens: list[list[str]], k: int) -> list[np.ndarray]:
    out = []
    for q in query_tokens:
        scores = bm.get_scores(q)
        top = np.argpartition(-scores, k - 1)[:k]
        out.append(top[np.argsort(-scores[top], kind="stable")])
    return out


def bench_bundled(cfg: IndexConfig, k: int, threads: int) -> float | None:
    bundled = load_bundled()
    if bundled is None:
        print(f"== {NO_DATA}", file=sys.stderr)
        return None
    passages, questions, source = bundled
    texts = [f"{p.title} {p.text}" for p in passages]
    print(f"== bundled data: {len(passages)} passages, {len(questions)} questions")
    print(f"   source: {source}")
    print(f"   index settings: {cfg.model_dump()}; k={k}; bm25s n_threads={threads}")

    t_build_s = best_time(lambda: BM25Retriever.build(passages, cfg, show_progress=False), 3)
    t_build_r = best_time(lambda: rank_bm25_build(texts, cfg), 3)
    peak_s, kept_s = traced_memory(lambda: BM25Retriever.build(passages, cfg, show_progress=False))
    peak_r, kept_r = traced_memory(lambda: rank_bm25_build(texts, cfg))

    retriever = BM25Retriever.build(passages, cfg, show_progress=False)
    bm, tok = rank_bm25_build(texts, cfg)
    q_tokens = tok.tokenize(
        questions, update_vocab=False, return_as="string", show_progress=False, allow_empty=False
    )
    live = [q for q in q_tokens if q]

    t_s = best_time(lambda: retriever.search(questions, k, n_threads=threads), 5)
    t_r = best_time(lambda: rank_bm25_search(bm, live, k), 3)
    qps_s, qps_r = len(questions) / t_s, len(live) / t_r

    # Sanity check that both see the same tokens: their top-k sets mostly agree (the two use
    # different idf formulas, Lucene's vs Okapi's, so they need not agree exactly).
    s_hits = retriever.search(questions, k)
    r_top = iter(rank_bm25_search(bm, live, k))
    overlap = []
    for hits, qt in zip(s_hits, q_tokens, strict=True):
        if qt:
            ids = {passages[i].id for i in next(r_top)}
            overlap.append(len(ids & {h.passage.id for h in hits}) / k)

    for name, t, peak, kept in (
        ("bm25s    ", t_build_s, peak_s, kept_s),
        ("rank_bm25", t_build_r, peak_r, kept_r),
    ):
        print(
            f"   build   {name} {t:8.3f} s  tracemalloc peak {peak:6.1f} MiB, "
            f"index holds {kept:6.1f} MiB"
        )
    print(f"   search  bm25s     {qps_s:10.1f} queries/s  (batched, {len(questions)} queries)")
    print(f"   search  rank_bm25 {qps_r:10.1f} queries/s  (one get_scores per query)")
    print(f"   top-{k} overlap bm25s vs rank_bm25: {100 * np.mean(overlap):.1f}%")
    ratio = qps_s / qps_r
    print(f"   bm25s is {ratio:.1f}x faster than rank_bm25 on batched search")
    return ratio


# ------------------------------------------------------------------------------ part 2
N_WORDS = 500_000
ZIPF_S = 1.0


def _vocabulary(seed: int) -> tuple[list[str], np.ndarray, int]:
    """Stop-words first (the most frequent ranks), then made-up words; Zipf CDF over ranks."""
    from bm25s.stopwords import STOPWORDS_EN

    rng = np.random.default_rng(seed)
    stop = list(dict.fromkeys(STOPWORDS_EN))
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words, seen = [], set(stop)
    while len(words) < N_WORDS:
        lengths = rng.integers(3, 11, size=N_WORDS)
        chars = letters[rng.integers(0, 26, size=(N_WORDS, 10))]
        for row, n in zip(chars, lengths, strict=True):
            w = "".join(row[:n])
            if w not in seen:
                seen.add(w)
                words.append(w)
                if len(words) == N_WORDS:
                    break
    vocab = stop + words
    p = 1.0 / np.arange(1, len(vocab) + 1) ** ZIPF_S
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0  # so searchsorted never runs past the last word
    return vocab, cdf, len(stop)


def synthetic_passages(n: int, seed: int = 0) -> Iterator[Passage]:
    """`n` passages of 80-120 Zipf-distributed words, with two-word titles; deterministic."""
    vocab, cdf, n_stop = _vocabulary(seed)
    rng = np.random.default_rng(seed + 1)
    chunk = 10_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        lengths = rng.integers(80, 121, size=m)
        ranks = np.searchsorted(cdf, rng.random(int(lengths.sum()))).tolist()
        titles = np.searchsorted(cdf, rng.uniform(cdf[n_stop], 1.0, size=(m, 2))).tolist()
        pos = 0
        for j in range(m):
            words = ranks[pos : pos + lengths[j]]
            pos += lengths[j]
            yield Passage(
                str(start + j),
                " ".join(vocab[t] for t in titles[j]).title(),
                " ".join([vocab[w] for w in words]),
            )


def synthetic_queries(n: int, seed: int = 0) -> list[str]:
    """Question-like queries: 8-15 words from the same distribution (stop-words included)."""
    vocab, cdf, _ = _vocabulary(seed)
    rng = np.random.default_rng(seed + 2)
    return [
        " ".join(vocab[i] for i in np.searchsorted(cdf, rng.random(int(rng.integers(8, 16)))))
        for _ in range(n)
    ]


def _rss() -> float:
    return psutil.Process().memory_info().rss / MIB


def _peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child_write_corpus(path: str, n: int) -> dict:
    t0 = time.perf_counter()
    with open(path, "w", encoding="utf-8") as f:
        for p in synthetic_passages(n):
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
    return {"seconds": time.perf_counter() - t0}


def _child_build(corpus: str, out: str, cfg: dict) -> dict:
    from stages.index import read_passages

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    base = _rss()
    t0 = time.perf_counter()
    stats = build_index(read_passages(Path(corpus)), IndexConfig(**cfg), out, show_progress=True)
    return {
        "seconds": time.perf_counter() - t0,
        "terms": stats.terms,
        "base_rss": base,
        "peak_rss": _peak_rss(),
    }


def _child_load_and_search(index: str, mmap: bool, queries: list[str], k: int, threads: int):
    base = _rss()
    t0 = time.perf_counter()
    r = BM25Retriever.load(index, mmap=mmap)
    load_s = time.perf_counter() - t0
    after_load = _rss()
    r.search(queries[:20], k, n_threads=threads)  # warm-up: first page-ins, allocator
    t0 = time.perf_counter()
    r.search(queries, k, n_threads=threads)
    search_s = time.perf_counter() - t0
    return {
        "load_s": load_s,
        "base_rss": base,
        "after_load_rss": after_load,
        "after_search_rss": _rss(),
        "qps": len(queries) / search_s,
    }


def in_child(fn: Callable, *args) -> dict:
    """Run `fn(*args)` in a fresh interpreter so its memory figures are its own."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / MIB


def bench_large(cfg: IndexConfig, n: int, k: int, threads: int, n_queries: int) -> None:
    print(f"\n== synthetic corpus: {n} passages (~100 words, Zipf s={ZIPF_S}, {N_WORDS} words)")
    with tempfile.TemporaryDirectory(prefix="exsearch-bench-") as tmp:
        corpus, index = Path(tmp) / "corpus.jsonl", Path(tmp) / "index"
        gen = in_child(_child_write_corpus, str(corpus), n)
        print(
            f"   corpus.jsonl  {corpus.stat().st_size / MIB:8.1f} MiB  "
            f"written in {gen['seconds']:.1f} s"
        )
        b = in_child(_child_build, str(corpus), str(index), cfg.model_dump())
        arrays = sum(f.stat().st_size for f in index.glob("*.npy")) / MIB
        pairs = np.load(index / "data.csc.index.npy", mmap_mode="r").shape[0]
        print(
            f"   build         {b['seconds']:8.1f} s  ({b['terms']} terms; read + tokenise + "
            f"index + save, as `stages.index`)"
        )
        print(
            f"   build memory  peak RSS {b['peak_rss']:8.1f} MiB "
            f"(interpreter + imports: {b['base_rss']:.0f} MiB)"
        )
        print(
            f"   index on disk {_dir_mib(index):8.1f} MiB  "
            f"(score arrays {arrays:.1f} MiB for {pairs / 1e6:.1f}M passage-term pairs, "
            "passages + vocabulary the rest)"
        )
        queries = synthetic_queries(n_queries)
        for mmap in (False, True):
            r = in_child(_child_load_and_search, str(index), mmap, queries, k, threads)
            print(
                f"   load mmap={mmap!s:5}  {r['load_s']:6.1f} s  RSS after load "
                f"{r['after_load_rss'] - r['base_rss']:8.1f} MiB, after {n_queries} queries "
                f"{r['after_search_rss'] - r['base_rss']:8.1f} MiB (above the "
                f"{r['base_rss']:.0f} MiB of a bare interpreter); "
                f"search {r['qps']:8.1f} queries/s"
            )


def main() -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--passages", type=int, default=1_000_000, help="synthetic corpus size")
    p.add_argument("--skip-large", action="store_true", help="skip the synthetic corpus part")
    p.add_argument(
        "--skip-bundled", action="store_true", help="only the synthetic part (needs no data)"
    )
    p.add_argument("--k", type=int, default=5, help="passages per query (default 5)")
    p.add_argument("--threads", type=int, default=0, help="bm25s n_threads (default 0: one)")
    p.add_argument("--queries", type=int, default=1000, help="synthetic queries (default 1000)")
    p.add_argument("--params", default="params.yaml", help="index settings from this file")
    args = p.parse_args()
    cfg = load_params(args.params).index if Path(args.params).is_file() else IndexConfig()
    logging.getLogger("bm25s").setLevel(logging.WARNING)

    ratio = None if args.skip_bundled else bench_bundled(cfg, args.k, args.threads)
    if not args.skip_large:
        bench_large(cfg, args.passages, args.k, args.threads, args.queries)
    if ratio is not None:
        print(f"speedup: {ratio:.1f}")
    elif not args.skip_bundled:
        sys.exit(NO_DATA)


if __name__ == "__main__":
    main()
