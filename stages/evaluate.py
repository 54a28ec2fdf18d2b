"""Evaluate one iteration's model on the dev questions, for every method in `evaluate.methods`.

    python -m stages.evaluate --iteration iter_0 [--model models/iter_0] [--index data/index]
        [--questions data/prepared/dev.jsonl] [--out runs/iter_0]
        [--predictions FILE] [--metrics FILE] [--table FILE]

Reads the model (models/<iteration> by default), the index and the dev questions; writes, in
`--out` unless given one by one (as dvc.yaml does), predictions.jsonl (one record per question
and method), metrics.json (EM, F1,
Acc, retrieval recall/precision, supporting-passage recall, searches per question, finish
reasons, tokens, seconds; per dataset and overall; and the first method's F1/EM difference to
each other method on the same questions, with a paired bootstrap 95% interval) and metrics.md
(the same as tables). Decoding is greedy (temperature 0) whatever `generation` says, so
evaluation is deterministic.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path

from exsearch import files
from exsearch.agent import METHODS, Decoding, SearchAgent
from exsearch.data import read_questions, write_trajectories
from exsearch.evaluation import (
    evaluate_methods,
    metrics_markdown,
    prediction_rows,
    relabel,
    select_questions,
)
from exsearch.generation import make_generator
from exsearch.retrieval import open_index
from stages import _common
from tracking import checkpoint_name, log_iteration_metrics

log = logging.getLogger("stages.evaluate")


def build_parser() -> argparse.ArgumentParser:
    """The stage's command line."""
    p = _common.parser(__doc__)
    p.add_argument(
        "--iteration",
        type=_common.checkpoint_name,
        default="iter_0",
        help="checkpoint to evaluate (default: iter_0)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        help="run these methods instead of evaluate.methods (e.g. rag, for a baseline's model)",
    )
    p.add_argument(
        "--label",
        help="record the results under this name instead of the methods' own (e.g. rag_sft: "
        "the rag method read by the rag_sft model), in the files and in MLflow; one method only",
    )
    add = partial(_common.add_path, p)
    add("--model", None, "model folder (default: models/<iteration>)")
    add("--index", Path("data/index"), "index folder (BM25 or dense)")
    add("--questions", Path("data/prepared/dev.jsonl"), "dev questions")
    add("--out", None, "folder of the outputs not given one by one (default: runs/<iteration>)")
    add("--predictions", None, "predictions to write (default: OUT/predictions.jsonl)")
    add("--metrics", None, "metrics to write (default: OUT/metrics.json)")
    add("--table", None, "metrics tables to write (default: OUT/metrics.md)")
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    out = args.out or _common.run_dir(args.iteration)
    predictions_file = args.predictions or out / "predictions.jsonl"
    metrics_file, table_file = (
        args.metrics or out / "metrics.json",
        args.table or out / "metrics.md",
    )
    model_dir = str(args.model or _common.checkpoint_dir(args.iteration))
    if args.label and len(args.methods or []) != 1:
        _common.fail("--label names the results of one method: give it with --methods M")
    params = _common.setup(args)
    methods = args.methods or params.methods_at(args.iteration)
    stage = f"evaluate_{args.label}" if args.label else "evaluate"  # dvc.yaml's stage name
    with _common.stage_run(
        params, stage, args.iteration, ["evaluate", "agent", "generation"]
    ) as run:
        try:
            questions = select_questions(
                read_questions(args.questions),
                params.evaluate.datasets,
                params.evaluate.limit,
            )
        except ValueError as e:
            _common.fail(e)
        if not questions:
            _common.fail(f"{args.questions}: no dev questions; check prepare.dev")
        dev = run.log_dataset(args.questions, "dev", "evaluation")
        log.info("evaluating %s on %d questions: %s", model_dir, len(questions), methods)
        retriever = _common.or_fail(
            open_index, args.index
        )  # before the model: a bad index fails fast
        generator = make_generator(model_dir, params.model, params.generation)
        agent = SearchAgent(generator, retriever, params.agent)
        # greedy whatever `generation` says, so evaluation is deterministic
        greedy = Decoding(temperature=0.0, seed=params.seed)
        records, doc = evaluate_methods(questions, agent, methods, greedy)
        if args.label:
            records, doc = relabel(records, doc, methods[0], args.label)
        doc = {"iteration": args.iteration, "model": model_dir, **doc}

        write_trajectories(predictions_file, records)
        files.write_json(metrics_file, doc)
        table = metrics_markdown(doc)
        files.write_text(table_file, f"# Evaluation of {args.iteration}\n\n{table}")
        log.info("results\n%s", table)
        behaviour = doc["behaviour"]
        scores = {
            "overall": doc["overall"],
            **doc["by_dataset"],
            **doc["comparisons"],
            **{f"hops_{h}": agg for h, agg in behaviour["by_hops"].items()},
        }
        model_id = run.checkpoint_model(checkpoint_name(args.iteration, args.label), model_dir)
        log_iteration_metrics(
            params,
            args.iteration,
            {args.label: scores} if args.label else scores,
            model_id=model_id,
            dataset=dev,
        )
        for path in (metrics_file, table_file, predictions_file):
            run.log_artifact(path)
        run.log_table(prediction_rows(records), "predictions_table.json")


if __name__ == "__main__":
    main()
