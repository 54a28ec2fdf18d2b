"""E-step sampling: K trajectories per training question with the previous iteration's model.

    python -m stages.sample --iteration iter_1 --prev iter_0

Reads models/<prev>, data/index, data/prepared/train.jsonl and the warm-up's trajectories
(whose questions it leaves out); writes runs/<iteration>/trajectories.jsonl and
runs/<iteration>/sample_stats.json. Iteration k samples `sample.questions` training questions no
earlier iteration trained on (exsearch.sampling.iteration_questions). Work is done in
shards kept under runs/<iteration>/.sample_shards/<fingerprint>/ until the stage succeeds, so a
crashed run resumes where it stopped and yields the same trajectories (same seed, same shards).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from statistics import fmean

from exsearch import io
from exsearch.agent import SearchAgent
from exsearch.config import checkpoint_step
from exsearch.generation import make_generator
from exsearch.questions import read_questions
from exsearch.sampling import fingerprint, iteration_questions, sample_in_shards
from exsearch.trajectories import read_trajectories, write_trajectories
from stages import _common
from stages.tracking import stage_run

log = logging.getLogger("stages.sample")


def _model_signature(model_dir: Path) -> list:
    return sorted(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in model_dir.iterdir() if f.is_file()
    )


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = _common.parser(__doc__)
    p.add_argument("--iteration", required=True, help="the EM iteration being built, e.g. iter_1")
    p.add_argument("--prev", required=True, help="the iteration whose model samples, e.g. iter_0")
    p.add_argument("--index", default="data/index", help="index directory (BM25 or dense)")
    p.add_argument("--questions", default="data/prepared/train.jsonl", help="training questions")
    p.add_argument(
        "--warmup",
        default="runs/warmup/trajectories.jsonl",
        help="warm-up trajectories, whose questions EM iterations leave out",
    )
    args = p.parse_args(argv)
    params = _common.setup(args)
    with stage_run(params, "sample", args.iteration, ["sample", "agent", "generation"]) as run:
        cfg = params.sample
        out = Path("runs") / args.iteration
        model_dir = _common.checkpoint_dir(args.prev)

        retriever = _common.open_index(args.index)  # before any work: a bad index fails fast
        pool = read_questions(args.questions)
        if not pool:
            sys.exit(f"error: {args.questions}: no training questions; check prepare.train")
        if cfg.exclude_warmup and not Path(args.warmup).is_file():
            sys.exit(
                f"error: {args.warmup}: missing; EM iterations leave the warm-up's questions out "
                "(run `dvc repro warmup`, or set sample.exclude_warmup: false)"
            )
        warmup_ids = (
            {t.qid for t in read_trajectories(args.warmup)} if cfg.exclude_warmup else set()
        )
        draw = iteration_questions(
            pool,
            checkpoint_step(args.iteration),
            cfg.questions,
            seed=params.seed + cfg.seed,
            exclude=warmup_ids,
        )
        questions = draw.questions
        log.info(
            "%s: %d questions from a pool of %d (%d warm-up questions left out), pass %d",
            args.iteration,
            len(questions),
            draw.pool_size,
            len(warmup_ids),
            draw.pass_number,
        )
        if draw.pass_number:
            log.warning(
                "the pool of %d questions is used up: %s repeats questions of earlier iterations",
                draw.pool_size,
                args.iteration,
            )
        agent_cfg = params.agent.model_copy(update={"max_steps": cfg.max_steps})
        key = fingerprint(
            cfg.model_dump(),
            agent_cfg.model_dump(),
            params.generation.model_dump(),
            params.model.model_dump(),
            _model_signature(model_dir),
            hashlib.sha256(Path(args.questions).read_bytes()).hexdigest(),
            [q.id for q in questions],
        )
        shard_dir = out / ".sample_shards" / key
        log.info("sampling %d × %d trajectories with %s", len(questions), cfg.k, model_dir)

        started = time.perf_counter()
        generator = make_generator(model_dir, params.model, params.generation)
        agent = SearchAgent(generator, retriever, agent_cfg)
        records = sample_in_shards(
            questions,
            agent,
            k=cfg.k,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=cfg.seed + params.seed,
            shard_size=cfg.shard_size,
            shard_dir=shard_dir,
        )
        write_trajectories(out / "trajectories.jsonl", records)
        stats = {
            "trajectories": len(records),
            "questions": len(questions),
            "pool": draw.pool_size,
            "pass": draw.pass_number,
            "k": cfg.k,
            "searches_per_trajectory": round(fmean(r.n_searches for r in records), 3),
            "tokens_generated": sum(r.tokens.generated for r in records),
            "finish_reasons": dict(Counter(r.finish_reason for r in records)),
            "seconds": round(time.perf_counter() - started, 1),
        }
        io.write_json(out / "sample_stats.json", stats)
        shutil.rmtree(out / ".sample_shards", ignore_errors=True)
        log.info("sampled: %s", stats)
        run.log_metrics(stats)
        run.log_dict([r.to_dict() for r in records[:20]], "trajectories_sample.json")


if __name__ == "__main__":
    main()
