"""Collect every checkpoint's dev metrics into one curve, a plot and a markdown report.

    python -m stages.report [--runs runs] [--out reports]
        [--summary FILE] [--plot FILE] [--curve FILE] [--metrics FILE]

Reads <runs>/<checkpoint>/metrics.json and predictions.jsonl for every checkpoint in
`em.evaluate`, and for each EM iteration its weight statistics and weighted trajectories
(exsearch.report.campaign.read_records); writes, in `--out` unless given one by one (as
dvc.yaml does),
em_curve.json (drawn by `dvc plots show`), em_curve.png (the agent's curve with the baselines'
F1 beside it), summary.md (opening with what the campaign shows, each claim with its interval)
and metrics.json: each checkpoint's agent F1/EM, and its paired differences (bootstrap 95%
intervals) against iter_0, against the checkpoint it was trained from and against each
retrieve-then-read baseline scored beside it. Those also go to
the campaign's MLflow parent run, with step = iteration.
"""

from __future__ import annotations

import argparse
import logging
import os
from functools import partial
from pathlib import Path

from exsearch import files
from exsearch.report import (
    checkpoint_comparisons,
    curve_rows,
    plot_curve,
    read_records,
    render_markdown,
    summary_metrics,
)
from stages import _common, _inputs

log = logging.getLogger("stages.report")
OUTPUTS = {
    "summary": "summary.md",
    "plot": "em_curve.png",
    "curve": "em_curve.json",
    "metrics": "metrics.json",
}


def build_parser() -> argparse.ArgumentParser:
    """The stage's command line."""
    p = _common.parser(__doc__)
    add = partial(_common.add_path, p)
    add("--runs", _common.RUNS, "the campaign's run records, a folder per checkpoint")
    add("--out", Path("reports"), "folder of the outputs not given one by one")
    add("--summary", None, "markdown report to write (default: OUT/summary.md)")
    add("--plot", None, "curve image to write (default: OUT/em_curve.png)")
    add("--curve", None, "curve points to write, for `dvc plots` (default: OUT/em_curve.json)")
    add("--metrics", None, "per-checkpoint summary to write (default: OUT/metrics.json)")
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    out = {k: getattr(args, k) or args.out / name for k, name in OUTPUTS.items()}
    params = _common.setup(args)
    with _common.stage_run(params, "report", sections=["em"]) as run:
        em = params.em
        records = _inputs.read(
            lambda runs: read_records(runs, list(em.iters), em.evaluate),
            args.runs,
            "the sample, weigh and evaluate stages write it",
        )
        rows = curve_rows(records.metrics)
        previous = {"iter_0": "base", **{k: v.prev for k, v in em.iters.items()}}
        comparisons = checkpoint_comparisons(records.predictions, previous)
        files.write_json(out["curve"], rows)
        files.write_json(out["metrics"], summary_metrics(records.metrics, comparisons))
        with files.atomic_path(out["plot"]) as tmp:
            plot_curve(rows, tmp, comparisons, records.baselines)
        summary = render_markdown(
            rows,
            records.weight_stats,
            records.examples,
            records.seconds,
            comparisons=comparisons,
            plot=os.path.relpath(out["plot"], out["summary"].parent),
            behaviour={c: m.get("behaviour") for c, m in records.metrics.items()},
            by_dataset=records.metrics[rows[-1]["checkpoint"]].get("by_dataset") if rows else None,
        )
        files.write_text(out["summary"], summary)
        log.info("report written to %s", ", ".join(str(p) for p in out.values()))
        for c, entry in comparisons.items():
            if entry:
                run.log_iteration_metrics(c, entry)
        for name in ("summary", "plot", "curve", "metrics"):
            run.log_artifact(out[name])


if __name__ == "__main__":
    main()
