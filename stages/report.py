"""Collect every checkpoint's dev metrics into one curve, a plot and a markdown report.

    python -m stages.report

Reads runs/<checkpoint>/metrics.json and predictions.jsonl for every checkpoint in
`em.evaluate`, and for each EM iteration its weight statistics and weighted trajectories; writes
reports/em_curve.json (drawn by `dvc plots show`), reports/em_curve.png, reports/summary.md and
reports/metrics.json: each checkpoint's agent F1/EM, and its paired differences (bootstrap 95%
intervals) against iter_0, against the checkpoint it was trained from and against its own RAG
baseline. Those also go to the campaign's MLflow parent run, with step = iteration.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from exsearch import io
from exsearch.report import checkpoint_comparisons, curve_rows, plot_curve, render_markdown
from exsearch.trajectories import read_trajectories
from stages import _common
from stages.tracking import stage_run

log = logging.getLogger("stages.report")


def _examples(it_dir: Path, n: int = 2) -> tuple[list, list]:
    """The `n` highest and lowest weighted trajectories of one iteration."""
    weights = pd.read_parquet(it_dir / "weights.parquet")
    by_key = {t.key: t for t in read_trajectories(it_dir / "trajectories.jsonl")}
    ranked = weights.sort_values("weight", ascending=False)
    pick = lambda df: [(by_key[(str(r.qid), r.sample)], float(r.weight)) for r in df.itertuples()]  # noqa: E731
    return pick(ranked.head(n)), pick(ranked.tail(n).iloc[::-1])


def stage_seconds(params) -> dict[str, float]:
    """Wall time of each timed stage, from the seconds its stats files record."""
    timed: dict[str, float] = {}
    warm = Path("runs/warmup/train_stats.json")
    if warm.is_file() and "seconds" in (w := io.read_json(warm)):
        timed["warmup (training)"] = w["seconds"]
    for it in params.em.iters:
        for stage, name in (
            ("sample", "sample_stats.json"),
            ("weigh", "weight_stats.json"),
            ("train", "train_stats.json"),
        ):
            stats = io.read_json(Path("runs") / it / name)
            timed[f"{stage}@{it}"] = stats.get("seconds")
    for c in params.em.evaluate:
        timed[f"evaluate@{c}"] = round(
            sum(io.read_json(f"runs/{c}/metrics.json")["seconds"].values()), 1
        )
    return timed


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = _common.parser(__doc__)
    p.add_argument("--out", default="reports", help="output directory (default reports/)")
    args = p.parse_args(argv)
    params = _common.setup(args)
    with stage_run(params, "report", sections=["em"]) as run:
        out = Path(args.out)

        metrics = {c: io.read_json(f"runs/{c}/metrics.json") for c in params.em.evaluate}
        rows = curve_rows(metrics)
        weight_stats, examples = {}, {}
        for it in params.em.iters:
            it_dir = Path("runs") / it
            weight_stats[it] = io.read_json(it_dir / "weight_stats.json")
            examples[it] = _examples(it_dir)

        predictions = {
            c: read_trajectories(f"runs/{c}/predictions.jsonl") for c in params.em.evaluate
        }
        previous = {"iter_0": "base", **{k: v.prev for k, v in params.em.iters.items()}}
        comparisons = checkpoint_comparisons(predictions, previous)
        summary = {
            c: {
                "n": metrics[c]["overall"]["n"],
                "f1": metrics[c]["overall"]["f1"],
                "em": metrics[c]["overall"]["em"],
                **comparisons[c],
            }
            for c in params.em.evaluate
        }

        io.write_json(out / "em_curve.json", rows)
        io.write_json(out / "metrics.json", summary)
        with io.atomic_path(out / "em_curve.png") as tmp:
            plot_curve(rows, tmp, comparisons)
        io.write_text(
            out / "summary.md",
            render_markdown(
                rows, weight_stats, examples, stage_seconds(params), comparisons=comparisons
            ),
        )
        log.info("report written to %s", out)
        for c, entry in comparisons.items():
            if entry:
                run.log_iteration_metrics(c, entry)
        for name in ("summary.md", "em_curve.png", "em_curve.json", "metrics.json"):
            run.log_artifact(out / name)


if __name__ == "__main__":
    main()
