"""Run the agent's methods greedily on the dev questions and score them: the evaluate stage's core.

It takes the agent as anything that answers questions (`Answerer`), so this package does not
import the agent: the report, which only scores records, depends on no model code.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from exsearch.config import Method
from exsearch.evaluation.behaviour import search_behaviour
from exsearch.evaluation.summary import metrics_document, summarize
from exsearch.schema import Passage, Question, Trajectory


class Answerer(Protocol):
    """What scoring a checkpoint needs of the agent (`exsearch.agent.SearchAgent`)."""

    seen_passages: Mapping[str, Passage]

    def run(
        self, questions: Sequence[Question], *, method: Method, decoding: Any
    ) -> list[Trajectory]:
        """One record per question, answered by `method`."""
        ...


def evaluate_methods(
    questions: Sequence[Question], agent: Answerer, methods: Sequence[Method], greedy: Any
) -> tuple[list[Trajectory], dict]:
    """Run each method with the `greedy` decoding; return all records and the metrics document.

    Each method is scored right after its run, against the passages the agent has seen so far;
    the first method is the primary one (`metrics_document`). Each record carries its own
    supporting-passage recall, so comparisons can pair it question by question.
    """
    records: list[Trajectory] = []
    summaries: dict[str, dict] = {}
    by_method: dict[str, list[Trajectory]] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        started = time.perf_counter()
        recs = agent.run(questions, method=method, decoding=greedy)
        seconds[method] = round(time.perf_counter() - started, 1)
        summaries[method] = summarize(recs, agent.seen_passages)
        recs = [
            dataclasses.replace(r, support_recall=scores["support_recall"])
            for r, scores in zip(recs, summaries[method]["per_sample"], strict=True)
        ]
        records.extend(recs)
        by_method[method] = recs
    doc = metrics_document(summaries, by_method, seconds)
    # how the first (primary) method searched, per kind of question and hop count
    doc["behaviour"] = search_behaviour(by_method[methods[0]], agent.seen_passages, questions)
    return records, doc


def relabel(
    records: Sequence[Trajectory], doc: Mapping[str, Any], method: str, label: str
) -> tuple[list[Trajectory], dict]:
    """`evaluate_methods`' output for one `method`, its name replaced by `label` throughout.

    For a method read by another model than the checkpoint's own (the `rag_sft` baseline is
    `rag` read by the rag_sft model): the records and metrics then say which it was, and can sit
    beside the agent's own `rag` records without being taken for them.
    """
    if set(doc["methods"]) != {method}:
        raise ValueError(
            f"relabel takes the results of one method ({method}), not {doc['methods']}"
        )
    relabelled = [dataclasses.replace(r, method=label) for r in records]
    renamed = {
        **doc,
        "primary": label,
        "seconds": {label: doc["seconds"][method]},
        "methods": {label: doc["methods"][method]},
    }
    return relabelled, renamed
