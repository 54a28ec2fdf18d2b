"""Evaluation: a checkpoint's agent records scored per dataset and overall, with paired intervals.

`summary.py` scores records (answer, retrieval, behaviour) and compares two runs question by
question; `checkpoint.py` runs each method of a checkpoint and scores it (the evaluate stage's
core); `behaviour.py` says how the agent searched per hop count and question kind; `tables.py`
writes every markdown table the project publishes; `flashrag.py` exports one method's
predictions in FlashRAG's dataset schema.
"""

from exsearch.evaluation.checkpoint import evaluate_methods, relabel
from exsearch.evaluation.flashrag import FlashragItem, export_flashrag, to_flashrag
from exsearch.evaluation.summary import (
    BEHAVIOUR_COLUMNS,
    DIFFERENCE_COLUMNS,
    behaviour_table,
    compare_records,
    difference_cells,
    metrics_markdown,
    prediction_rows,
    select_questions,
)
from exsearch.evaluation.tables import format_interval, markdown_table

__all__ = [
    "BEHAVIOUR_COLUMNS",
    "DIFFERENCE_COLUMNS",
    "FlashragItem",
    "behaviour_table",
    "compare_records",
    "difference_cells",
    "evaluate_methods",
    "export_flashrag",
    "format_interval",
    "markdown_table",
    "metrics_markdown",
    "prediction_rows",
    "relabel",
    "select_questions",
    "to_flashrag",
]
