"""The `rag_sft` baseline: the model trained for one-shot RAG, step for step beside the EM chain.

    python -m stages.rag_sft --iteration iter_1 --model models/rag_sft/iter_0
        --trained-on runs/iter_1/trajectories.jsonl --steps-of runs/iter_1/train_stats.json
        --out models/rag_sft/iter_1 --stats runs/rag_sft/iter_1/train_stats.json
        [--warmup-model models/rag_sft/iter_0] [--questions data/prepared/train.jsonl]
        [--index data/index]

For each stage of the EM chain (the warm-up, `iter_0`, and every EM iteration) there is one
`rag_sft` stage that trains on the same questions (those of `--trained-on`) for the same number
of optimiser steps (`steps` in `--steps-of`), with the same `train` settings (the warm-up's
learning rate and LoRA settings for `iter_0`), and continues from the previous `rag_sft` model
as the EM chain continues from its previous model (`train.start_from: warmup`: from
`--warmup-model`). Its examples are the `rag` method's prompt with the gold answer
(exsearch.agent.rag_sft). So `models/rag_sft/iter_k` is what the same budget buys a reader
that never searches; dvc.yaml scores it with the `rag` method beside `iter_k`'s agent.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path

from exsearch import files
from exsearch.agent import questions_trained_on, rag_sft_examples, warmup_train_config
from exsearch.data import read_questions, read_trajectories
from exsearch.mstep import run_stats, train_weighted
from exsearch.retrieval import open_index
from stages import _common
from tracking import LiveMetrics, checkpoint_name

log = logging.getLogger("stages.rag_sft")


def build_parser() -> argparse.ArgumentParser:
    """The stage's command line."""
    p = _common.parser(__doc__)
    p.add_argument(
        "--iteration",
        type=_common.checkpoint_name,
        required=True,
        help="the EM stage matched, e.g. iter_1",
    )
    add = partial(_common.add_path, p)
    add("--model", None, "the rag_sft model to continue from (required)")
    add("--warmup-model", None, "the one to continue from with train.start_from: warmup")
    add("--trained-on", None, "the matched stage's training trajectories (required)")
    add("--steps-of", None, "the matched stage's train_stats.json (required)")
    add("--questions", Path("data/prepared/train.jsonl"), "the training questions")
    add("--index", Path("data/index"), "index folder (BM25 or dense)")
    add("--out", None, "model folder to write (required)")
    add("--stats", None, "training stats to write (required)")
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    for name in ("model", "trained_on", "steps_of", "out", "stats"):
        if getattr(args, name) is None:
            _common.fail(f"--{name.replace('_', '-')} is required")
    params = _common.setup(args)
    warmup = args.iteration == "iter_0"
    cfg = warmup_train_config(params.train, params.warmup) if warmup else params.train
    start = args.model
    if not warmup and cfg.start_from == "warmup":
        if args.warmup_model is None:
            _common.fail("train.start_from is 'warmup': give --warmup-model")
        start = args.warmup_model
    with _common.stage_run(params, "rag_sft", args.iteration, ["train", "warmup"]) as run:
        steps = files.read_json(args.steps_of).get("steps", 0)
        if not steps:  # the matched stage trained nothing (warmup.enabled: false)
            files.copy_dir(start, args.out)
            files.write_json(args.stats, {"steps": 0, "questions": 0})
            log.info("%s trained no steps: %s is a copy of %s", args.iteration, args.out, start)
            return
        pool = read_questions(args.questions)
        run.log_dataset(args.questions, "train", "training")
        trained = read_trajectories(args.trained_on)
        questions = _common.or_fail(questions_trained_on, trained, pool)
        retriever = _common.or_fail(open_index, args.index)
        examples = rag_sft_examples(questions, retriever, params.agent)
        log.info(
            "rag_sft for %s from %s: %d questions, %d steps",
            args.iteration,
            start,
            len(examples),
            steps,
        )
        live = [LiveMetrics(run)]
        result = train_weighted(start, examples, args.out, cfg, max_steps=steps, callbacks=live)
        stats = {"matched_steps": steps, "questions": len(examples), **run_stats(result)}
        files.write_json(args.stats, stats)
        run.log_metrics(stats)  # the loss history, a list, is left out by log_metrics itself
        run.log_checkpoint(checkpoint_name(args.iteration, "rag_sft"), args.out)


if __name__ == "__main__":
    main()
