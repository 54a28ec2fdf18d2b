"""Markdown tables: the one writer behind every table the stages and the campaign publish.

One writer keeps the tables alike; the callers differ only in how many digits a float shows
(`floats`) and what stands for a missing value (`missing`): the campaign's summaries, read at a
glance, keep the defaults; the score tables of the evaluate and report stages show floats in
full ("g") and a missing score as "–".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    floats: str = ".4g",
    missing: str = "",
) -> str:
    """A GitHub markdown table of `rows`, one line per row, ending in a newline.

    Args:
        rows: the table's rows; a row lacking a column shows `missing` there.
        columns: the columns in order (default: every key of `rows`, in order of first
            appearance). No rows and no columns named give the line "_no rows_".
        floats: format spec of floats (".4g": 4 significant digits; "g": up to 6). Ints and
            strings are written as they are.
        missing: what a None (or absent) value shows as.
    """
    if not rows and columns is None:
        return "_no rows_\n"
    cols = list(dict.fromkeys(k for r in rows for k in r) if columns is None else columns)

    def cell(v: Any) -> str:
        if v is None:
            return missing
        return format(v, floats) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def format_interval(interval: Mapping[str, float]) -> str:
    """An `Interval.to_dict()` in points, as the tables show it: +1.2 [-0.3, +2.7]."""
    return f"{interval['diff']:+.1f} [{interval['lo']:+.1f}, {interval['hi']:+.1f}]"
