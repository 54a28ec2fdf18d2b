"""E-step sampling: K trajectories per training question with the previous iteration's model.

    python -m stages.sample --iteration iter_1 [--prev iter_0 | --model models/iter_0]
        [--index data/index] [--questions data/prepared/train.jsonl]
        [--warmup runs/warmup/trajectories.jsonl] [--out runs/iter_1/trajectories.jsonl]
        [--stats runs/iter_1/sample_stats.json]

Reads the previous model (models/<prev>, `prev` from params.yaml em.iters by default), the index,
the training questions and the warm-up's trajectories (whose questions it leaves out); writes the
trajectories and their stats. Iteration k samples `sample.questions` training questions no
earlier iteration trained on (exsearch.estep.sampling.iteration_questions). Work is done in
shards kept
under .sample_shards/<fingerprint>/ beside the trajectories until the stage succeeds, so a
crashed run resumes where it stopped and yields the same trajectories (same seed, same shards).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from functools import partial
from pathlib import Path

from exsearch import files
from exsearch.agent import SearchAgent
from exsearch.config import checkpoint_step
from exsearch.data import read_questions, write_trajectories
from exsearch.estep import (
    Draw,
    iteration_questions,
    sample_in_shards,
    sample_stats,
    shard_key,
    warmup_question_ids,
)
from exsearch.generation import make_generator
from exsearch.retrieval import open_index
from stages import _common

log = logging.getLogger("stages.sample")


def build_parser() -> argparse.ArgumentParser:
    """The stage's command line."""
    p = _common.parser(__doc__)
    p.add_argument(
        "--iteration",
        type=_common.checkpoint_name,
        required=True,
        help="the EM iteration being built, e.g. iter_1",
    )
    p.add_argument("--prev", help="the iteration whose model samples (default: from em.iters)")
    add = partial(_common.add_path, p)
    add("--model", None, "model that samples (default: models/<prev>)")
    add("--index", Path("data/index"), "index folder (BM25 or dense)")
    add("--questions", Path("data/prepared/train.jsonl"), "training questions")
    add("--warmup", _common.run_dir("warmup") / "trajectories.jsonl", "warm-up trajectories")
    add("--out", None, "trajectories to write (default: runs/<iteration>/trajectories.jsonl)")
    add("--stats", None, "stats to write (default: runs/<iteration>/sample_stats.json)")
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    out = args.out or _common.run_dir(args.iteration) / "trajectories.jsonl"
    stats_file = args.stats or _common.run_dir(args.iteration) / "sample_stats.json"
    params = _common.setup(args)
    with _common.stage_run(
        params, "sample", args.iteration, ["sample", "agent", "generation"]
    ) as run:
        cfg = params.sample
        model_dir = _common.model_dir(args.model, params, args.iteration, args.prev)
        retriever = _common.or_fail(
            open_index, args.index
        )  # before any work: a bad index fails fast
        if not (pool := read_questions(args.questions)):
            _common.fail(f"{args.questions}: no training questions; check prepare.train")
        run.log_dataset(args.questions, "train", "training")
        warmup_ids = _left_out(args.warmup) if cfg.exclude_warmup else set()
        step, seed = checkpoint_step(args.iteration), params.seed + cfg.seed
        draw = iteration_questions(pool, step, cfg.questions, seed=seed, exclude=warmup_ids)
        _log_draw(args.iteration, draw, len(warmup_ids))
        key = shard_key(
            cfg,
            params.agent,
            params.generation,
            params.model,
            model_dir,
            args.questions,
            draw.questions,
        )
        log.info("sampling %d × %d trajectories with %s", len(draw.questions), cfg.k, model_dir)
        started = time.perf_counter()
        generator = make_generator(model_dir, params.model, params.generation)
        records = sample_in_shards(
            draw.questions,
            SearchAgent(generator, retriever, params.agent),
            k=cfg.k,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=seed,
            shard_size=cfg.shard_size,
            shard_dir=out.parent / ".sample_shards" / key,
            score=cfg.score,
            min_searches=cfg.min_searches,
        )
        write_trajectories(out, records)
        stats = sample_stats(records, draw, cfg.k, time.perf_counter() - started)
        files.write_json(stats_file, stats)
        shutil.rmtree(out.parent / ".sample_shards", ignore_errors=True)
        log.info("sampled: %s", stats)
        run.log_metrics(stats)
        run.log_dict([r.to_dict() for r in records[:20]], "trajectories_sample.json")


def _left_out(warmup: Path) -> set[str]:
    """The warm-up's question ids, or exit saying how to get its trajectories."""
    if not warmup.is_file():
        _common.fail(
            f"{warmup}: missing; EM iterations leave the warm-up's questions out "
            "(run `dvc repro warmup`, or set sample.exclude_warmup: false)"
        )
    return warmup_question_ids(warmup)


def _log_draw(iteration: str, draw: Draw, n_warmup: int) -> None:
    """Say which questions this iteration samples, and warn when they repeat earlier ones."""
    log.info(
        "%s: %d questions from a pool of %d (%d warm-up questions left out), pass %d",
        iteration,
        len(draw.questions),
        draw.pool_size,
        n_warmup,
        draw.pass_number,
    )
    if draw.pass_number:
        log.warning(
            "the pool of %d questions is used up: %s repeats questions of earlier iterations",
            draw.pool_size,
            iteration,
        )


if __name__ == "__main__":
    main()
