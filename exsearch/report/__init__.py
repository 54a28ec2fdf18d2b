"""The campaign report: every checkpoint's metrics as a curve, a plot and a markdown summary."""

from exsearch.report.campaign import (
    checkpoint_comparisons,
    curve_rows,
    plot_curve,
    read_records,
    render_markdown,
    summary_metrics,
)

__all__ = [
    "checkpoint_comparisons",
    "curve_rows",
    "plot_curve",
    "read_records",
    "render_markdown",
    "summary_metrics",
]
