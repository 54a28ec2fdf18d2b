"""The campaign report: every checkpoint's metrics as a curve, a plot and a markdown summary."""

from exsearch.report.campaign import (
    WEIGHT_COLUMNS,
    checkpoint_comparisons,
    curve_rows,
    plot_curve,
    read_records,
    render_markdown,
    stat_cell,
    summary_metrics,
)
from exsearch.report.conclusion import conclusion_markdown

__all__ = [
    "WEIGHT_COLUMNS",
    "conclusion_markdown",
    "checkpoint_comparisons",
    "curve_rows",
    "plot_curve",
    "read_records",
    "render_markdown",
    "stat_cell",
    "summary_metrics",
]
