"""Run the agent's methods greedily on the dev questions and score them: the evaluate stage's core.

Kept apart from `exsearch.evaluation`, which scores records and is all the report needs: this
module runs the agent, so what imports it depends on the agent, the generators and the index.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from exsearch.agent import Decoding, SearchAgent
from exsearch.config import Method
from exsearch.evaluation import metrics_document, summarize
from exsearch.schema import Question, Trajectory


def evaluate_methods(
    questions: Sequence[Question], agent: SearchAgent, methods: Sequence[Method], seed: int
) -> tuple[list[Trajectory], dict]:
    """Run each method greedily (temperature 0); return all records and the metrics document.

    Each method is scored right after its run, against the passages the agent has seen so far;
    the first method is the primary one (`metrics_document`).
    """
    records: list[Trajectory] = []
    summaries: dict[str, dict] = {}
    by_method: dict[str, list[Trajectory]] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        started = time.perf_counter()
        recs = agent.run(questions, method=method, decoding=Decoding(temperature=0.0, seed=seed))
        seconds[method] = round(time.perf_counter() - started, 1)
        records.extend(recs)
        by_method[method] = recs
        summaries[method] = summarize(recs, agent.seen_passages)
    return records, metrics_document(summaries, by_method, seconds)
