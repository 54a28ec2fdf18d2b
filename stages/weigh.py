"""E-step weighting: weigh each sampled trajectory by the gold answer's likelihood after it.

    python -m stages.weigh --iteration iter_1 [--prev iter_0 | --model models/iter_0]
        [--trajectories runs/iter_1/trajectories.jsonl] [--out runs/iter_1/weights.parquet]
        [--stats runs/iter_1/weight_stats.json]

Reads the iteration's sampled trajectories, which the sample stage scored with the model that
sampled them (`gold_score`); trajectories without a score (written by another tool) are scored
here with that model (models/<prev>, `prev` from params.yaml em.iters by default). Writes the
weights (qid, sample, score, prediction, gold, f1, correct, support_recall, searches,
distinct_queries, weight, scheme) and their stats: mean per-question entropy, effective sample
size, …, and whether the score follows what the samples found (`evidence_*`: the share of
questions whose samples differ in support recall, the rank correlation of score and support
recall within questions and pooled, the score's AUC for right answers; exsearch.estep.evidence).
The scheme and its temperature come from the `weigh` params. With `weigh.advantage` set (the
`grpo` learner needs it), the table also holds each sample's `reward` and its group-relative
`advantage`, and the stats their spread (exsearch.estep.advantages).
"""

from __future__ import annotations

import argparse
import logging
import time
from functools import partial

from exsearch import files
from exsearch.data import read_trajectories
from exsearch.estep import (
    advantage_stats,
    compute_weights,
    evidence_stats,
    score_table,
    weight_stats,
    with_advantages,
)
from exsearch.generation import make_generator
from stages import _common, _inputs

log = logging.getLogger("stages.weigh")


def build_parser() -> argparse.ArgumentParser:
    """The stage's command line."""
    p = _common.parser(__doc__)
    p.add_argument(
        "--iteration",
        type=_common.checkpoint_name,
        required=True,
        help="the EM iteration being built, e.g. iter_1",
    )
    p.add_argument("--prev", help="the iteration whose model scores (default: from em.iters)")
    add = partial(_common.add_path, p)
    add("--model", None, "model that sampled the trajectories (default: models/<prev>)")
    add(
        "--trajectories",
        None,
        "sampled trajectories (default: runs/<iteration>/trajectories.jsonl)",
    )
    add("--out", None, "weights to write (default: runs/<iteration>/weights.parquet)")
    add("--stats", None, "stats to write (default: runs/<iteration>/weight_stats.json)")
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    runs = _common.run_dir(args.iteration)
    trajectories_file = args.trajectories or runs / "trajectories.jsonl"
    out, stats_file = args.out or runs / "weights.parquet", args.stats or runs / "weight_stats.json"
    params = _common.setup(args)
    with _common.stage_run(params, "weigh", args.iteration) as run:
        cfg = params.weigh
        started = time.perf_counter()
        trajectories = _inputs.read(
            read_trajectories, trajectories_file, "the sample stage writes it"
        )
        if not trajectories:
            _common.fail(f"{trajectories_file} holds no trajectory")
        model_dir = _common.model_dir(args.model, params, args.iteration, args.prev)
        if all(t.gold_score is not None for t in trajectories):
            scores = [t.gold_score for t in trajectories]
        else:
            log.info("scoring %d trajectories with %s", len(trajectories), model_dir)
            generator = make_generator(model_dir, params.model, params.generation)
            scores = generator.gold_answer_scores(trajectories)
        table = compute_weights(score_table(trajectories, scores), cfg.scheme, tau=cfg.tau, c=cfg.c)
        advantages: dict[str, float] = {}
        if cfg.advantage != "none":
            table = with_advantages(
                table,
                trajectories,
                cfg.advantage,
                kind=cfg.reward.kind,
                format_penalty=cfg.reward.format_penalty,
            )
            advantages = advantage_stats(table)
        stats = {
            "scheme": cfg.scheme,
            **weight_stats(table),
            "score_mean": float(table["score"].mean()),
            "sampled_em": float(table["correct"].mean()),
            "sampled_f1": float(table["f1"].mean()),
            "questions_with_a_correct_sample": float(table.groupby("qid")["correct"].any().mean()),
            "support_recall_mean": float(table["support_recall"].mean()),
            "searches_mean": float(table["searches"].mean()),
            "distinct_queries_mean": float(table["distinct_queries"].mean()),
            **{f"evidence_{k}": v for k, v in evidence_stats(table).items()},
            **advantages,
            "seconds": round(time.perf_counter() - started, 1),
        }
        with files.atomic_path(out) as tmp:
            table.to_parquet(tmp, index=False)
        files.write_json(stats_file, stats)
        log.info("weights: %s", stats)
        run.log_metrics(stats)
        run.log_artifact(stats_file)
        run.log_artifact(out)


if __name__ == "__main__":
    main()
