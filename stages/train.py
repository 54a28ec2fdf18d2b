"""M-step: fine-tune the previous iteration's model on its weighted trajectories.

    python -m stages.train --iteration iter_1 --prev iter_0

Reads models/<prev> (or models/iter_0 with `train.start_from: warmup`),
runs/<iteration>/trajectories.jsonl and weights.parquet, and with `train.replay: N` N warm-up
trajectories from runs/warmup/trajectories.jsonl (weight 1 each, drawn per iteration); writes
models/<iteration> (full model, or LoRA merged into it, or an adapter naming its base, per
the `train` params) and runs/<iteration>/train_stats.json with the loss curve. Each trajectory's
loss is its weight × the mean cross-entropy of the tokens the assistant wrote, with the sampled
answer replaced by the gold one (METHOD.md §2). With `train.launcher` set to an accelerate
config file, the stage runs itself on `train.num_processes` processes (stages/_launch.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from exsearch import io
from exsearch.mstep_examples import replayed_examples, weighted_examples
from exsearch.training import run_stats, train_weighted
from exsearch.trajectories import read_trajectories
from stages import _common, _launch
from stages.tracking import stage_run

log = logging.getLogger("stages.train")


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = _common.parser(__doc__)
    p.add_argument("--iteration", required=True, help="the EM iteration being built, e.g. iter_1")
    p.add_argument("--prev", required=True, help="the iteration to continue from, e.g. iter_0")
    p.add_argument(
        "--warmup",
        default="runs/warmup/trajectories.jsonl",
        help="warm-up trajectories (train.replay draws from them)",
    )
    args = p.parse_args(argv)
    params = _common.setup(args)
    if (status := _launch.relaunch(params.train, "stages.train", argv)) is not None:
        if status:  # it ran under `accelerate launch` (train.launcher)
            sys.exit(f"error: stages.train under {params.train.launcher} exited with {status}")
        return
    with stage_run(params, "train", args.iteration) as run:
        out = Path("runs") / args.iteration

        cfg = params.train
        trajectories = read_trajectories(out / "trajectories.jsonl")
        examples = weighted_examples(trajectories, pd.read_parquet(out / "weights.parquet"))
        replayed = []
        if cfg.replay:
            warmup = read_trajectories(args.warmup)
            replayed = replayed_examples(warmup, cfg.replay, args.iteration, params.seed)
        start = "iter_0" if cfg.start_from == "warmup" else args.prev
        log.info(
            "M-step of %s from %s: %d sampled + %d replayed warm-up trajectories",
            args.iteration,
            start,
            len(examples),
            len(replayed),
        )
        examples += replayed
        model_out = _common.checkpoint_dir(args.iteration)
        result = train_weighted(_common.checkpoint_dir(start), examples, model_out, cfg)
        if not _launch.is_main_process():
            return  # rank 0 writes the outputs
        stats = run_stats(result)
        io.write_json(out / "train_stats.json", stats)
        log.info(
            "trained %s: %d steps, final loss %s", model_out, result.steps, stats["final_loss"]
        )
        run.log_metrics(stats)
        run.log_history(result.loss_history)
        run.log_model_dir(model_out)


if __name__ == "__main__":
    main()
