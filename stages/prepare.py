"""Stage `prepare`: read the raw question files into one schema and build the passage corpus.

    python -m stages.prepare [--params params.yaml] [--out-dir data/prepared]

Reads `params.prepare`: the `train` and `dev` question files, the extra `corpus` files, and
whether question contexts join the corpus. Writes, each atomically, to the output folder:
`train.jsonl` and `dev.jsonl` (one question per line), `corpus.jsonl` (one passage per line,
de-duplicated, ids are content hashes) and `stats.json` (counts per split, file and dataset).
An invalid row stops the stage with its file and line, unless `skip_invalid: true`, which skips
and counts it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from exsearch.config_data import PrepareConfig
from exsearch.data import CorpusBuilder, fetch_corpus_file, read_corpus, read_questions
from exsearch.io import atomic_path, write_json, write_jsonl
from exsearch.schema import Passage, Question
from stages._common import parser, setup
from stages.tracking import stage_run

log = logging.getLogger("stages.prepare")


@dataclass
class Prepared:
    """Everything the stage writes, before it is written."""

    train: list[Question]
    dev: list[Question]
    corpus: list[Passage]
    stats: dict[str, Any]


def prepare(cfg: PrepareConfig, sink: Callable[[Passage], object] | None = None) -> Prepared:
    """Read every configured file and build the corpus; pure apart from reading the inputs.

    Corpus passages go to `sink` in corpus order when one is given (the stage writes them
    straight to corpus.jsonl; `Prepared.corpus` is then empty), else to `Prepared.corpus`.
    Corpus files are streamed and de-duplicated by 8-byte passage ids, so with a sink memory
    holds the questions, their contexts and ~110 bytes per passage: a 21M-passage Wikipedia
    fits in a few GiB. A corpus file that is missing and has a `url` is downloaded first.

    Raises:
        ValueError: an invalid row (unless `cfg.skip_invalid`), one question id given by two
            files of the same split, or nothing to work with: a split that lists no file, a file
            that yields no question (or no passage), an empty corpus. Later stages would only
            fail on it after loading a model.
        OSError: a corpus file is missing and cannot be downloaded.
    """
    builder = CorpusBuilder(sink)
    datasets: dict[str, Counter] = {}
    train, train_stats = _read_split("train", cfg, builder, datasets)
    dev, dev_stats = _read_split("dev", cfg, builder, datasets)

    corpus_files = {}
    for spec in cfg.corpus:
        fetch_corpus_file(spec)
        passages = tqdm(read_corpus(spec), spec.path, unit=" passages", disable=None, mininterval=5)
        added, dropped = builder.add_all(passages)
        log.info("corpus: %s: %d passages (%d new)", spec.path, added + dropped, added)
        if added + dropped == 0:
            raise ValueError(f"{spec.path}: no passages (prepare.corpus); is the file empty?")
        key = spec.path if spec.path not in corpus_files else f"{spec.path}#{len(corpus_files) + 1}"
        corpus_files[key] = {
            "passages": added + dropped,
            "new_passages": added,
            "duplicate_passages": dropped,
        }

    if len(builder) == 0:
        raise ValueError(
            "the corpus is empty: list files under prepare.corpus or set "
            "prepare.contexts_in_corpus: true with question files that have contexts"
        )
    missing = sum(
        (hop["title"], hop["paragraph"]) not in builder
        for q in train + dev
        for hop in q.extra.get("support", [])
    )
    if missing and cfg.contexts_in_corpus:  # readers put every support paragraph in the contexts
        raise RuntimeError(f"bug: {missing} gold supporting paragraphs are not in the corpus")
    if missing:
        log.warning("%d gold supporting paragraphs are not in the corpus", missing)
    overlap = len({q.id for q in train} & {q.id for q in dev})
    if overlap:
        log.warning("%d question ids are in both train and dev", overlap)
    all_files = [*train_stats["files"].values(), *dev_stats["files"].values()]
    all_files += corpus_files.values()
    stats = {
        "train": train_stats,
        "dev": dev_stats,
        "corpus": {
            "passages": len(builder),
            "duplicates_removed": sum(f["duplicate_passages"] for f in all_files),
            "gold_support_missing": missing,
            "train_dev_id_overlap": overlap,
            "files": corpus_files,
        },
        "datasets": {name: dict(counts) for name, counts in datasets.items()},
    }
    return Prepared(train=train, dev=dev, corpus=builder.passages, stats=stats)


def _read_split(
    split: str, cfg: PrepareConfig, builder: CorpusBuilder, datasets: dict[str, Counter]
) -> tuple[list[Question], dict[str, Any]]:
    """Read the question files of one split, feeding their contexts to `builder`."""
    questions: list[Question] = []
    origin: dict[str, str] = {}  # question id -> file it came from
    files: dict[str, Any] = {}
    if not getattr(cfg, split):
        raise ValueError(f"prepare.{split} lists no question file; add at least one")
    for spec in getattr(cfg, split):
        got = read_questions(spec, skip_invalid=cfg.skip_invalid)
        if not got.questions:
            why = f"all {len(got.skipped)} rows are invalid" if got.skipped else "is it empty?"
            raise ValueError(f"{spec.path}: no questions in prepare.{split} ({why})")
        kept = repeats = 0
        for q in got.questions:
            if q.id in origin:
                msg = f"{spec.path}: question id {q.id!r} was already read from {origin[q.id]}"
                if spec.skip_repeats:
                    repeats += 1
                    continue
                if not cfg.skip_invalid:
                    raise ValueError(
                        f"{msg} ({split} ids must be unique; `skip_repeats: true` on this file "
                        "drops such repeats)"
                    )
                got.skipped.append(msg)
                continue
            origin[q.id] = spec.path
            questions.append(q)
            kept += 1
        added, dropped = builder.add_all(got.contexts) if cfg.contexts_in_corpus else (0, 0)
        log.info(
            "%s: %s: %d questions, %d skipped, %d repeats dropped, %d context paragraphs "
            "(%d new passages)",
            split,
            spec.path,
            kept,
            len(got.skipped),
            repeats,
            len(got.contexts),
            added,
        )
        for why in got.skipped[:5]:
            log.warning("skipped %s", why)
        if len(got.skipped) > 5:
            log.warning("... and %d more skipped rows in %s", len(got.skipped) - 5, spec.path)
        key = spec.path if spec.path not in files else f"{spec.path}#{len(files) + 1}"
        files[key] = {
            "questions": kept,
            "skipped": len(got.skipped),
            "repeats_dropped": repeats,
            "contexts": len(got.contexts),
            "new_passages": added,
            "duplicate_passages": dropped,
        }
        counts = datasets.setdefault(spec.dataset, Counter())
        counts[f"{split}_questions"] += kept
        counts["skipped"] += len(got.skipped)
    stats = {
        "questions": len(questions),
        "skipped": sum(f["skipped"] for f in files.values()),
        "files": files,
    }
    return questions, stats


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line."""
    p = parser(__doc__)
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path("data/prepared"),
        help="where train.jsonl, dev.jsonl, corpus.jsonl and stats.json go (default: %(default)s)",
    )
    args = p.parse_args(argv)
    params = setup(args)
    with stage_run(params, "prepare") as run:
        # The corpus streams to its file as it is built (it may hold millions of passages).
        corpus_path = args.out_dir / "corpus.jsonl"
        with atomic_path(corpus_path) as tmp, tmp.open("w", encoding="utf-8") as corpus:

            def write(passage: Passage) -> None:
                corpus.write(json.dumps(passage.to_dict(), ensure_ascii=False) + "\n")

            try:
                out = prepare(params.prepare, sink=write)
            except (ValueError, OSError) as e:
                sys.exit(f"error: {e}")
        write_jsonl(args.out_dir / "train.jsonl", (q.to_dict() for q in out.train))
        write_jsonl(args.out_dir / "dev.jsonl", (q.to_dict() for q in out.dev))
        write_json(args.out_dir / "stats.json", out.stats)
        log.info(
            "wrote %d train, %d dev questions and %d passages (%d duplicates removed) to %s",
            len(out.train),
            len(out.dev),
            out.stats["corpus"]["passages"],
            out.stats["corpus"]["duplicates_removed"],
            args.out_dir,
        )
        run.log_metrics(out.stats)
        run.log_artifact(args.out_dir / "stats.json")


if __name__ == "__main__":
    main()
