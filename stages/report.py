"""Collect every checkpoint's dev metrics into one curve, a plot and a markdown report.

    python -m stages.report

Reads runs/<checkpoint>/metrics.json for every checkpoint in `em.evaluate`, and for each EM
iteration its weight statistics and weighted trajectories; writes reports/em_curve.json (drawn by
`dvc plots show`), reports/em_curve.png and reports/summary.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from exsearch import io
from exsearch.report import curve_rows, plot_curve, render_markdown
from stages import _common
from stages._tracking import stage_run

log = logging.getLogger("stages.report")


def _examples(it_dir: Path, n: int = 2) -> tuple[list, list]:
    """The `n` highest and lowest weighted trajectories of one iteration."""
    weights = pd.read_parquet(it_dir / "weights.parquet")
    by_key = {(str(t["qid"]), t["sample"]): t for t in io.read_jsonl(it_dir / "trajectories.jsonl")}
    ranked = weights.sort_values("weight", ascending=False)
    pick = lambda df: [(by_key[(str(r.qid), r.sample)], float(r.weight)) for r in df.itertuples()]  # noqa: E731
    return pick(ranked.head(n)), pick(ranked.tail(n).iloc[::-1])


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

        io.write_json(out / "em_curve.json", rows)
        with io.atomic_path(out / "em_curve.png") as tmp:
            plot_curve(rows, tmp)
        io.write_text(out / "summary.md", render_markdown(rows, weight_stats, examples))
        log.info("report written to %s", out)
        for name in ("summary.md", "em_curve.png", "em_curve.json"):
            run.log_artifact(out / name)


if __name__ == "__main__":
    main()
