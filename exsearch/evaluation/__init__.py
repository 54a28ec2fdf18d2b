"""Evaluation: a checkpoint's agent records scored per dataset and overall, with paired intervals.

`summary.py` scores records (answer, retrieval, behaviour) and compares two runs question by
question; `checkpoint.py` runs each method of a checkpoint and scores it (the evaluate stage's
core); `tables.py` writes every markdown table the project publishes.
"""

from exsearch.evaluation.checkpoint import evaluate_methods
from exsearch.evaluation.summary import compare_records, metrics_markdown, select_questions
from exsearch.evaluation.tables import format_interval, markdown_table

__all__ = [
    "compare_records",
    "evaluate_methods",
    "format_interval",
    "markdown_table",
    "metrics_markdown",
    "select_questions",
]
