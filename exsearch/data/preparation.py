"""Data preparation: question and corpus files become train, dev and one de-duplicated corpus.

`prepare` reads the files `params.prepare` lists and returns the train and dev questions, the
corpus and counts of what was kept, skipped and merged; the `prepare` stage writes them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from exsearch.config import CorpusFile, DatasetFile, PrepareConfig
from exsearch.data.corpus import CorpusBuilder, fetch_corpus_file, read_corpus
from exsearch.data.datasets import QuestionSet, read_dataset
from exsearch.schema import Passage, Question

log = logging.getLogger(__name__)


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
    corpus_files = _add_corpus_files(cfg.corpus, builder)

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
        got = read_dataset(spec, skip_invalid=cfg.skip_invalid)
        if not got.questions:
            why = f"all {len(got.skipped)} rows are invalid" if got.skipped else "is it empty?"
            raise ValueError(f"{spec.path}: no questions in prepare.{split} ({why})")
        kept, repeats = _keep_new_ids(split, spec, got, cfg.skip_invalid, origin, questions)
        added, dropped = builder.add_all(got.contexts) if cfg.contexts_in_corpus else (0, 0)
        _log_file(split, spec, got, kept, repeats, added)
        files[_stats_key(spec.path, files)] = {
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


def _keep_new_ids(
    split: str,
    spec: DatasetFile,
    got: QuestionSet,
    skip_invalid: bool,
    origin: dict[str, str],
    questions: list[Question],
) -> tuple[int, int]:
    """Append to `questions` those of `got` whose id no earlier file of the split gave.

    A repeat is dropped and counted when `spec.skip_repeats`, else listed in `got.skipped`
    when `skip_invalid`; `origin` (id -> file) records each kept question's file. Returns
    (kept, repeats dropped).

    Raises:
        ValueError: a repeated id, naming both files, unless one of the above applies.
    """
    kept = repeats = 0
    for q in got.questions:
        if q.id in origin:
            msg = f"{spec.path}: question id {q.id!r} was already read from {origin[q.id]}"
            if spec.skip_repeats:
                repeats += 1
                continue
            if not skip_invalid:
                raise ValueError(
                    f"{msg} ({split} ids must be unique; `skip_repeats: true` on this file "
                    "drops such repeats)"
                )
            got.skipped.append(msg)
            continue
        origin[q.id] = spec.path
        questions.append(q)
        kept += 1
    return kept, repeats


def _log_file(
    split: str, spec: DatasetFile, got: QuestionSet, kept: int, repeats: int, added: int
) -> None:
    """Log what one question file gave, and the first few rows it skipped and why."""
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


def _add_corpus_files(specs: list[CorpusFile], builder: CorpusBuilder) -> dict[str, Any]:
    """Stream each corpus file into `builder` (downloading a missing one); return its counts.

    Raises:
        ValueError: a file yields no passage.
        OSError: a missing file cannot be downloaded.
    """
    corpus_files: dict[str, Any] = {}
    for spec in specs:
        fetch_corpus_file(spec)
        passages = tqdm(read_corpus(spec), spec.path, unit=" passages", disable=None, mininterval=5)
        added, dropped = builder.add_all(passages)
        log.info("corpus: %s: %d passages (%d new)", spec.path, added + dropped, added)
        if added + dropped == 0:
            raise ValueError(f"{spec.path}: no passages (prepare.corpus); is the file empty?")
        corpus_files[_stats_key(spec.path, corpus_files)] = {
            "passages": added + dropped,
            "new_passages": added,
            "duplicate_passages": dropped,
        }
    return corpus_files


def _stats_key(path: str, files: dict[str, Any]) -> str:
    """`path`, or `path#n` when the file is listed twice: stats keep one entry per listing."""
    return path if path not in files else f"{path}#{len(files) + 1}"
