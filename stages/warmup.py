"""Warm-up (iteration 0): SFT the base model on trajectories derived from supporting facts.

    python -m stages.warmup [--base models/base] [--index data/index]
        [--questions data/prepared/train.jsonl] [--out models/iter_0]
        [--trajectories runs/warmup/trajectories.jsonl] [--stats runs/warmup/train_stats.json]

Builds one trajectory per training question that has supporting facts (exsearch.agent.warmup: no
LLM involved), or reads them from `warmup.teacher_file` (JSONL in the same schema, e.g. written
by a larger model), and fine-tunes the base model on them with the `train` settings and the
`warmup` epochs and learning rate (exsearch.agent.warmup_set). Writes the trajectories, the
warmed-up model and its training stats. With `warmup.enabled: false` the base model is copied
unchanged. With `train.launcher` set to an accelerate config file, the stage runs itself on
`train.num_processes` processes (stages/_launch.py).
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path

from exsearch import files
from exsearch.agent import (
    derived_trajectories,
    seeded_draw,
    teacher_trajectories,
    warmup_examples,
    warmup_questions,
    warmup_train_config,
)
from exsearch.data import read_questions
from exsearch.mstep import run_stats, train_weighted
from exsearch.retrieval import open_index
from stages import _common, _launch
from tracking import LiveMetrics

log = logging.getLogger("stages.warmup")


def build_parser() -> argparse.ArgumentParser:
    """The stage's command line."""
    p = _common.parser(__doc__)
    add, records = partial(_common.add_path, p), _common.run_dir("warmup")
    add("--base", _common.checkpoint_dir("base"), "model to warm up")
    add("--index", Path("data/index"), "index folder (BM25 or dense), unless teacher_file")
    add("--questions", Path("data/prepared/train.jsonl"), "training questions")
    add("--out", _common.checkpoint_dir("iter_0"), "model folder to write")
    add("--trajectories", records / "trajectories.jsonl", "trajectories to write")
    add("--stats", records / "train_stats.json", "training stats to write")
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    params = _common.setup(args)
    cfg = params.warmup
    if cfg.enabled and _launch.ran_under_launcher(params.train, "stages.warmup", argv):
        return
    main_process = _launch.is_main_process()  # the one that writes, under a launcher
    with _common.stage_run(params, "warmup", sections=["warmup", "train"]) as run:
        if cfg.teacher_file:
            trajectories = teacher_trajectories(cfg.teacher_file)
            run.log_dataset(cfg.teacher_file, "teacher", "training")
        else:
            run.log_dataset(args.questions, "train", "training")
            questions = warmup_questions(read_questions(args.questions), cfg, params.seed)
            retriever = _common.or_fail(open_index, args.index)
            trajectories = derived_trajectories(
                questions, retriever, params.agent, cfg, params.seed
            )
        trajectories = seeded_draw(trajectories, cfg.max_examples, params.seed)
        if main_process:
            files.write_jsonl(args.trajectories, trajectories)
        if not cfg.enabled:
            files.copy_dir(args.base, args.out)
            files.write_json(args.stats, {"enabled": False})
            log.info("warm-up disabled: %s is a copy of %s", args.out, args.base)
            return
        train_cfg = warmup_train_config(params.train, cfg)
        examples = warmup_examples(trajectories)
        live = [LiveMetrics(run)]
        result = train_weighted(args.base, examples, args.out, train_cfg, callbacks=live)
        if not main_process:
            return
        files.write_json(args.stats, {"enabled": True, **run_stats(result)})
        run.log_metrics(run_stats(result))
        run.log_checkpoint("iter_0", args.out)


if __name__ == "__main__":
    main()
