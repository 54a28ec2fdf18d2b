"""Stage `index`: build the BM25 index (bm25s) over the prepared passage corpus.

    python -m stages.index [--params params.yaml] [--corpus FILE.jsonl] [--out runs/index]

Reads `params.index` (BM25 variant, k1, b, stemmer, stop-words) and the corpus, one passage per
line ({"id", "title", "text"}); indexes title + text. Writes the output folder atomically: the
bm25s arrays, the passages and the settings queries must be tokenised with. Passages are
streamed to disk while they are tokenised, so corpora of millions of passages fit in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from exsearch.io import atomic_path, read_jsonl
from exsearch.retrieval import IndexStats, build_index
from exsearch.schema import Passage
from stages._common import parser, setup
from stages._tracking import stage_run

log = logging.getLogger("stages.index")
# Progress bars only for corpora that take more than a few seconds (~20k passages).
PROGRESS_MIN_BYTES = 16 * 2**20


def read_passages(path: Path) -> Iterator[Passage]:
    """Stream passages from a JSONL file; a bad record raises ValueError naming file and line."""
    for lineno, row in enumerate(read_jsonl(path), 1):
        try:
            p = Passage.from_dict(row)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{path}: record {lineno}: not a passage ({e!r}); expected id, title, text"
            ) from None
        if not isinstance(p.text, str) or not isinstance(p.title, str):
            raise ValueError(f"{path}: record {lineno} (id {p.id}): title and text must be strings")
        yield p


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> IndexStats:
    """CLI entry point."""
    p = parser(__doc__)
    p.add_argument(
        "--corpus",
        type=Path,
        default=Path("data/prepared/corpus.jsonl"),
        help="passages, one JSON object per line (default: data/prepared/corpus.jsonl)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/index"), help="index folder (default: runs/index)"
    )
    args = p.parse_args(argv)
    params = setup(args)
    with stage_run(params, "index") as run:
        if not args.corpus.is_file():
            raise SystemExit(
                f"error: {args.corpus}: corpus not found (run `dvc repro prepare` first)"
            )
        if not args.verbose:
            # bm25s sets its own logger to DEBUG at import; keep its chatter out of normal runs.
            logging.getLogger("bm25s").setLevel(logging.WARNING)
        cfg = params.index
        log.info("indexing %s with %s", args.corpus, cfg.model_dump())
        try:
            with atomic_path(args.out, is_dir=True) as tmp:
                progress = args.corpus.stat().st_size >= PROGRESS_MIN_BYTES
                stats = build_index(read_passages(args.corpus), cfg, tmp, show_progress=progress)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        log.info(
            "indexed %d passages (%d terms) in %.1fs; %s is %.1f MiB",
            stats.passages,
            stats.terms,
            stats.seconds,
            args.out,
            _size(args.out) / 2**20,
        )
        run.log_metrics(
            {"passages": stats.passages, "terms": stats.terms, "seconds": stats.seconds}
        )
        return stats


if __name__ == "__main__":
    main()
