"""E-step weighting: score each sampled trajectory by the gold answer's likelihood, then weigh.

    python -m stages.weigh --iteration iter_1 --prev iter_0

Reads runs/<iteration>/trajectories.jsonl and the model of models/<prev> (the one that
sampled them); writes runs/<iteration>/weights.parquet (qid, sample, score, prediction, gold, f1,
correct, weight, scheme) and runs/<iteration>/weight_stats.json (mean per-question entropy,
effective sample size, …). The scheme and its temperature come from the `weigh` params.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from exsearch import io
from exsearch.generation.openai import OpenAIGenerator
from exsearch.modeling import load_model
from exsearch.trajectories import read_trajectories
from exsearch.weighting import compute_weights, gold_answer_scores, score_table, weight_stats
from stages import _common
from stages.tracking import stage_run

log = logging.getLogger("stages.weigh")


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = _common.parser(__doc__)
    p.add_argument("--iteration", required=True, help="the EM iteration being built, e.g. iter_1")
    p.add_argument("--prev", required=True, help="the iteration whose model scores, e.g. iter_0")
    args = p.parse_args(argv)
    params = _common.setup(args)
    with stage_run(params, "weigh", args.iteration) as run:
        cfg = params.weigh
        out = Path("runs") / args.iteration

        started = time.perf_counter()
        trajectories = read_trajectories(out / "trajectories.jsonl")
        if not trajectories:
            raise SystemExit(f"error: {out / 'trajectories.jsonl'} holds no trajectory")
        model_dir = _common.checkpoint_dir(args.prev)
        if params.generation.backend == "openai":
            with OpenAIGenerator.from_config(model_dir, params.generation) as server:
                scores = server.gold_answer_scores(trajectories)
        else:
            model, tokenizer = load_model(model_dir, params.model.dtype, params.model.device)
            scores = gold_answer_scores(model, tokenizer, trajectories, cfg.batch_size)
        table = compute_weights(score_table(trajectories, scores), cfg.scheme, tau=cfg.tau, c=cfg.c)
        stats = {
            "scheme": cfg.scheme,
            **weight_stats(table),
            "score_mean": float(table["score"].mean()),
            "sampled_em": float(table["correct"].mean()),
            "sampled_f1": float(table["f1"].mean()),
            "questions_with_a_correct_sample": float(table.groupby("qid")["correct"].any().mean()),
            "seconds": round(time.perf_counter() - started, 1),
        }
        with io.atomic_path(out / "weights.parquet") as tmp:
            table.to_parquet(tmp, index=False)
        io.write_json(out / "weight_stats.json", stats)
        log.info("weights: %s", stats)
        run.log_metrics(stats)
        run.log_artifact(out / "weight_stats.json")
        run.log_artifact(out / "weights.parquet")


if __name__ == "__main__":
    main()
