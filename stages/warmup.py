"""Warm-up (iteration 0): SFT the base model on trajectories derived from supporting facts.

    python -m stages.warmup

Builds one trajectory per training question that has supporting facts (exsearch.warmup: no
LLM involved), or reads them from `warmup.teacher_file` (JSONL in the same schema, e.g. written
by a larger model), and fine-tunes models/base on them with the `train` settings and the
`warmup` epochs and learning rate. Writes runs/warmup/trajectories.jsonl, models/iter_0 and
runs/warmup/train_stats.json. With `warmup.enabled: false` the base model is copied unchanged.
With `train.launcher` set to an accelerate config file, the stage runs itself on
`train.num_processes` processes (stages/_launch.py).
"""

from __future__ import annotations

import logging
import random
import shutil
import sys
from pathlib import Path

from exsearch import io
from exsearch.questions import read_questions
from exsearch.schema import Trajectory
from exsearch.training import run_stats, train_weighted
from exsearch.warmup import WarmupShape, build_trajectories
from stages import _common, _launch
from stages.tracking import stage_run

log = logging.getLogger("stages.warmup")


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = _common.parser(__doc__)
    p.add_argument("--base", default=str(_common.checkpoint_dir("base")), help="model to warm up")
    p.add_argument("--index", default="data/index", help="index directory (BM25 or dense)")
    p.add_argument("--questions", default="data/prepared/train.jsonl", help="training questions")
    p.add_argument(
        "--out",
        default=str(_common.checkpoint_dir("iter_0")),
        help="where the warmed-up model goes",
    )
    p.add_argument("--workdir", default="runs/warmup", help="trajectories and stats")
    args = p.parse_args(argv)
    params = _common.setup(args)
    if (
        params.warmup.enabled
        and (status := _launch.relaunch(params.train, "stages.warmup", argv)) is not None
    ):
        if status:  # it ran under `accelerate launch` (train.launcher)
            sys.exit(f"error: stages.warmup under {params.train.launcher} exited with {status}")
        return
    main_process = _launch.is_main_process()  # the one that writes, under a launcher
    with stage_run(params, "warmup", sections=["warmup", "train"]) as run:
        cfg = params.warmup
        work = Path(args.workdir)

        if cfg.teacher_file:
            trajectories = list(io.read_jsonl(cfg.teacher_file))
            log.info("read %d teacher trajectories from %s", len(trajectories), cfg.teacher_file)
        else:
            questions = read_questions(args.questions)
            questions = [q for q in questions if q.extra.get("support")]
            if cfg.max_examples and cfg.max_examples < len(questions):
                # A seeded draw, not the head: the training files are grouped by dataset.
                questions = random.Random(params.seed).sample(questions, cfg.max_examples)
            retriever = _common.open_index(args.index)
            shape = WarmupShape(
                top_k=params.agent.top_k,
                passage_max_words=params.agent.passage_max_words,
                max_steps=params.agent.max_steps,
                record_max_words=cfg.record_max_words,
                first_search=cfg.first_search,
            )
            built, _ = build_trajectories(
                questions, retriever, retriever.iter_passages(), shape, seed=params.seed
            )
            trajectories = [t.to_dict() for t in built]
            log.info("built %d warm-up trajectories (%s)", len(trajectories), shape)
        if cfg.max_examples and cfg.max_examples < len(trajectories):
            trajectories = random.Random(params.seed).sample(trajectories, cfg.max_examples)
        if main_process:
            io.write_jsonl(work / "trajectories.jsonl", trajectories)

        if not cfg.enabled:
            with io.atomic_path(args.out, is_dir=True) as tmp:
                shutil.copytree(args.base, tmp, dirs_exist_ok=True)
            io.write_json(work / "train_stats.json", {"enabled": False})
            log.info("warm-up disabled: %s is a copy of %s", args.out, args.base)
            return
        train_cfg = params.train.model_copy(
            update={"epochs": cfg.epochs, "learning_rate": cfg.learning_rate}
        )
        # A teacher's records are written as read above; here only their chats are needed.
        examples = [
            {"messages": Trajectory.from_dict(t).messages, "weight": 1.0} for t in trajectories
        ]
        result = train_weighted(args.base, examples, args.out, train_cfg)
        if not main_process:
            return
        io.write_json(work / "train_stats.json", {"enabled": True, **run_stats(result)})
        run.log_metrics(run_stats(result))
        run.log_history(result.loss_history)
        run.log_model_dir(args.out)


if __name__ == "__main__":
    main()
