"""Evaluate one iteration's model on the dev questions, for every method in `evaluate.methods`.

    python -m stages.evaluate --iteration iter_0

Reads models/<iteration>, data/index and data/prepared/dev.jsonl; writes
runs/<iteration>/predictions.jsonl (one record per question and method), metrics.json (EM, F1,
Acc, retrieval recall/precision, supporting-passage recall, searches per question, finish
reasons, tokens, seconds; per dataset and overall; and the first method's F1/EM difference to
each other method on the same questions, with a paired bootstrap 95% interval) and metrics.md
(the same as tables). Decoding is greedy (temperature 0) whatever `generation` says, so
evaluation is deterministic.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from exsearch import io
from exsearch.agent import SearchAgent
from exsearch.evaluate_methods import evaluate_methods
from exsearch.evaluation import metrics_markdown, select_questions
from exsearch.generation import make_generator
from exsearch.questions import read_questions
from exsearch.trajectories import write_trajectories
from stages import _common
from stages.tracking import log_iteration_metrics, stage_run

log = logging.getLogger("stages.evaluate")


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = _common.parser(__doc__)
    p.add_argument("--iteration", default="iter_0", help="iteration to evaluate (default iter_0)")
    p.add_argument("--model", help="model directory (default models/<iteration>)")
    p.add_argument("--index", default="data/index", help="index directory (BM25 or dense)")
    p.add_argument("--questions", default="data/prepared/dev.jsonl", help="dev questions")
    p.add_argument("--out", help="output directory (default runs/<iteration>)")
    args = p.parse_args(argv)
    params = _common.setup(args)
    with stage_run(params, "evaluate", args.iteration, ["evaluate", "agent", "generation"]) as run:
        out = Path(args.out or f"runs/{args.iteration}")
        model_dir = args.model or str(_common.checkpoint_dir(args.iteration))

        try:
            questions = select_questions(
                read_questions(args.questions),
                params.evaluate.datasets,
                params.evaluate.limit,
            )
        except ValueError as e:
            sys.exit(f"error: {e}")
        if not questions:
            sys.exit(f"error: {args.questions}: no dev questions; check prepare.dev")
        log.info(
            "evaluating %s on %d questions: %s", model_dir, len(questions), params.evaluate.methods
        )
        retriever = _common.open_index(args.index)  # before the model: a bad index fails fast
        generator = make_generator(model_dir, params.model, params.generation)
        agent = SearchAgent(generator, retriever, params.agent)
        records, doc = evaluate_methods(questions, agent, params.evaluate.methods, params.seed)
        doc = {"iteration": args.iteration, "model": model_dir, **doc}

        write_trajectories(out / "predictions.jsonl", records)
        io.write_json(out / "metrics.json", doc)
        table = metrics_markdown(doc)
        io.write_text(out / "metrics.md", f"# Evaluation of {args.iteration}\n\n{table}")
        log.info("results\n%s", table)
        scores = {"overall": doc["overall"], **doc["by_dataset"], **doc["comparisons"]}
        log_iteration_metrics(params, args.iteration, scores)
        for name in ("metrics.json", "metrics.md", "predictions.jsonl"):
            run.log_artifact(out / name)


if __name__ == "__main__":
    main()
