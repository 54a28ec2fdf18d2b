"""Stage `index`: build the retrieval index over the prepared passage corpus, BM25 or dense.

    python -m stages.index [--params params.yaml] [--corpus FILE.jsonl] [--out data/index]

Reads `params.index` and the corpus, one passage per line ({"id", "title", "text"}); indexes
title + text. `index.kind: bm25` (default) builds a bm25s index (variant, k1, b, stemmer,
stop-words); `index.kind: dense` embeds the passages with the sentence-transformers model
`index.dense_model` (needs `pip install -e ".[dense]"`; the default model comes from
`python scripts/fetch_dense_model.py`). Writes the output folder atomically: the index arrays,
the passages and the settings queries must be processed with. Passages are streamed to disk as
they are indexed, so corpora of millions of passages fit in memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exsearch.files import atomic_path, read_jsonl
from exsearch.retrieval import INDEX_KINDS
from exsearch.schema import Passage
from stages._common import add_path, fail, parser, setup, stage_run

log = logging.getLogger("stages.index")


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


def build_parser() -> argparse.ArgumentParser:
    """The stage's command line."""
    p = parser(__doc__)
    add_path(p, "--corpus", Path("data/prepared/corpus.jsonl"), "passages, one JSON object a line")
    add_path(p, "--out", Path("data/index"), "index folder to write")
    return p


def main(argv: list[str] | None = None) -> Any:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    params = setup(args)
    with stage_run(params, "index") as run:
        if not args.corpus.is_file():
            fail(f"{args.corpus}: corpus not found (run `dvc repro prepare` first)")
        if not args.verbose:
            # bm25s sets its own logger to DEBUG at import; keep its chatter out of normal runs.
            logging.getLogger("bm25s").setLevel(logging.WARNING)
        cfg = params.index
        log.info("indexing %s with %s", args.corpus, cfg.model_dump())
        try:
            with atomic_path(args.out, is_dir=True) as tmp:
                kind = INDEX_KINDS[cfg.kind]
                progress = args.corpus.stat().st_size >= kind.progress_min_bytes
                stats = kind.build(read_passages(args.corpus), cfg, tmp, show_progress=progress)
        except (ValueError, ImportError, OSError) as e:
            fail(e)
        metrics = dataclasses.asdict(stats)
        log.info(
            "%s index built: %s; %s is %.1f MiB",
            cfg.kind,
            metrics,
            args.out,
            _size(args.out) / 2**20,
        )
        run.log_metrics(metrics)
        return stats


if __name__ == "__main__":
    main()
