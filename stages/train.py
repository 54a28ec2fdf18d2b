"""M-step: train the previous iteration's model on its E-step's output, with `train.method`.

    python -m stages.train --iteration iter_1 [--prev iter_0 | --model models/iter_0]
        [--warmup-model models/iter_0] [--trajectories runs/iter_1/trajectories.jsonl]
        [--weights runs/iter_1/weights.parquet] [--warmup runs/warmup/trajectories.jsonl]
        [--out models/iter_1] [--stats runs/iter_1/train_stats.json]

Reads the previous model (models/<prev>, `prev` from params.yaml em.iters by default; or the
warm-up's model with `train.start_from: warmup`), the iteration's trajectories and weights, and
with `train.replay: N` N warm-up trajectories (weight 1 each, drawn per iteration); writes the
new model (full model, or LoRA merged into it, or an adapter naming its base, per the `train`
params) and its training stats with the loss curve. `train.method` names the learner, which
gets the E-step's output as written (exsearch.mstep.LEARNERS); the default, `weighted`, scales
each trajectory's loss by its weight, over the tokens the assistant wrote, with the sampled
answer replaced by the gold one (METHOD.md §2). With `train.launcher` set to an accelerate
config file, the stage runs itself on `train.num_processes` processes (stages/_launch.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from functools import partial

import pandas as pd

from exsearch import files
from exsearch.data import read_trajectories
from exsearch.mstep import EStepOutput, learner, replay_draw, run_stats
from stages import _common, _inputs, _launch
from tracking import LiveMetrics

log = logging.getLogger("stages.train")


def build_parser() -> argparse.ArgumentParser:
    """The stage's command line."""
    p = _common.parser(__doc__)
    p.add_argument(
        "--iteration",
        type=_common.checkpoint_name,
        required=True,
        help="the EM iteration being built, e.g. iter_1",
    )
    p.add_argument("--prev", help="the iteration to continue from (default: from em.iters)")
    add, runs = partial(_common.add_path, p), "runs/<iteration>"
    add("--model", None, "model to continue from (default: models/<prev>)")
    add("--warmup-model", _common.checkpoint_dir("iter_0"), "model of train.start_from: warmup")
    add("--trajectories", None, f"sampled trajectories (default: {runs}/trajectories.jsonl)")
    add("--weights", None, f"their weights (default: {runs}/weights.parquet)")
    add("--warmup", _common.run_dir("warmup") / "trajectories.jsonl", "train.replay's trajectories")
    add("--out", None, "model folder to write (default: models/<iteration>)")
    add("--stats", None, f"training stats to write (default: {runs}/train_stats.json)")
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    runs = _common.run_dir(args.iteration)
    model_out = args.out or _common.checkpoint_dir(args.iteration)
    stats_file = args.stats or runs / "train_stats.json"
    params = _common.setup(args)
    if _launch.ran_under_launcher(params.train, "stages.train", argv):
        return
    with _common.stage_run(params, "train", args.iteration) as run:
        cfg = params.train
        fit = learner(cfg.method)
        e_step = EStepOutput(
            trajectories=_inputs.read(
                read_trajectories,
                args.trajectories or runs / "trajectories.jsonl",
                "the sample stage writes it",
            ),
            table=_inputs.read(
                pd.read_parquet,
                args.weights or runs / "weights.parquet",
                "the weigh stage writes it",
            ),
        )
        _check_weighted(e_step)
        if cfg.replay:
            warmup = _inputs.read(read_trajectories, args.warmup, "the warmup stage writes it")
            replay = replay_draw(warmup, cfg.replay, args.iteration, params.seed)
            e_step = dataclasses.replace(e_step, replay=replay)
        if cfg.start_from == "warmup":
            start = args.warmup_model
        else:
            start = _common.model_dir(args.model, params, args.iteration, args.prev)
        log.info(
            "M-step of %s from %s (%s): %d sampled + %d replayed warm-up trajectories",
            args.iteration,
            start,
            cfg.method,
            len(e_step.trajectories),
            len(e_step.replay),
        )
        result = fit(start, e_step, model_out, cfg, callbacks=[LiveMetrics(run)])
        if not _launch.is_main_process():
            return  # rank 0 writes the outputs
        stats = run_stats(result)
        files.write_json(stats_file, stats)
        log.info(
            "trained %s: %d steps, final loss %s", model_out, result.steps, stats["final_loss"]
        )
        run.log_metrics(stats)
        run.log_checkpoint(args.iteration, model_out)


def _check_weighted(e_step: EStepOutput) -> None:
    """Fail before the model loads if the weights are not those of these trajectories."""
    missing = [c for c in ("qid", "sample", "weight") if c not in e_step.table.columns]
    if missing:
        _common.fail(f"the weights table has no column(s) {missing}: not the weigh stage's output")
    weighted = {
        (str(q), int(k)) for q, k in zip(e_step.table["qid"], e_step.table["sample"], strict=True)
    }
    unweighted = [t.key for t in e_step.trajectories if t.key not in weighted]
    if unweighted:
        _common.fail(
            f"{len(unweighted)} of {len(e_step.trajectories)} trajectories have no weight (first: "
            f"question {unweighted[0][0]}, sample {unweighted[0][1]}): weights and trajectories "
            "are of different E-steps"
        )


if __name__ == "__main__":
    main()
