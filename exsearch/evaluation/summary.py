"""Score agent records: answer quality, retrieval quality and behaviour, per dataset and overall.

The scores are those of `exsearch.metrics` (per trajectory, then averaged), so the tested
metric is the reported one. Also the comparisons a campaign is judged by: two sets of records
(two checkpoints, or the agent and the RAG baseline of one checkpoint) paired by question, with
a bootstrap interval on their F1 and EM difference (`compare_records`); and the metrics document
and tables the evaluate stage writes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from exsearch.evaluation.tables import format_interval, markdown_table
from exsearch.metrics import (
    BOOTSTRAP_RESAMPLES,
    Interval,
    MetricResult,
    exact_match,
    f1_score,
    paired_bootstrap,
    qa_scores,
    retrieval_precision_at_k,
    retrieval_recall_at_k,
    supporting_recall,
)
from exsearch.schema import Passage, Question, Trajectory

ANSWER_METRICS = ("em", "f1", "acc")
RETRIEVAL_METRICS = ("recall", "precision", "support_recall")
# Methods that never retrieve by design: retrieval metrics do not apply to them.
NO_RETRIEVAL = frozenset({"direct"})
SCORES_TABLE_COLUMNS = (*ANSWER_METRICS, *RETRIEVAL_METRICS, "searches_per_question")


def retrieved_passages(record: Trajectory, passages: Mapping[str, Passage]) -> list[Passage]:
    """The distinct passages a trajectory retrieved over all its searches, first seen first.

    Ids missing from `passages` are skipped.
    """
    seen: dict[str, Passage] = {}
    for step in record.steps:
        for pid in step.passage_ids:
            if pid in passages:
                seen.setdefault(pid, passages[pid])
    return list(seen.values())


def score_records(
    records: Sequence[Trajectory], passages: Mapping[str, Passage]
) -> dict[str, MetricResult]:
    """Every answer and retrieval metric per trajectory, aligned with `records`.

    The conventions of `exsearch.metrics`: retrieval recall and precision look at everything a
    trajectory retrieved and are 0 for one that retrieved nothing; they are None only for a
    method that never retrieves (`direct`). Supporting-passage recall is also None for a
    question without supporting titles.
    """
    if not records:  # the metrics refuse empty input; an empty summary has no scores
        return {key: MetricResult(None, []) for key in (*ANSWER_METRICS, *RETRIEVAL_METRICS)}
    scores = qa_scores([r.prediction for r in records], [r.answers for r in records])
    idx = [i for i, r in enumerate(records) if r.method not in NO_RETRIEVAL]
    shown = [retrieved_passages(records[i], passages) for i in idx]
    golds = [records[i].answers for i in idx]
    titles = [records[i].supporting_titles for i in idx]
    retrieval = (
        {
            "recall": retrieval_recall_at_k(shown, golds),
            "precision": retrieval_precision_at_k(shown, golds),
            "support_recall": supporting_recall(shown, titles),
        }
        if idx
        else {key: MetricResult(None, []) for key in RETRIEVAL_METRICS}
    )
    for key, result in retrieval.items():
        per_sample: list[float | None] = [None] * len(records)
        for i, value in zip(idx, result.per_sample, strict=True):
            per_sample[i] = value
        scores[key] = MetricResult.of(per_sample)
    return scores


def _percent(result: MetricResult) -> float | None:
    return None if result.value is None else round(100 * result.value, 2)


def _aggregate(
    records: Sequence[Trajectory], scores: Mapping[str, MetricResult], idx: list[int]
) -> dict:
    """The summary of the trajectories at `idx`: metrics in percent, searches, tokens, endings."""
    out: dict = {"n": len(idx)}
    out.update(
        {key: _percent(scores[key].subset(idx)) for key in (*ANSWER_METRICS, *RETRIEVAL_METRICS)}
    )
    searches = [records[i].n_searches for i in idx]
    out["searches_per_question"] = round(fmean(searches), 3) if searches else 0.0
    out["tokens_generated"] = sum(records[i].tokens.generated for i in idx)
    out["finish_reasons"] = dict(sorted(Counter(records[i].finish_reason for i in idx).items()))
    return out


def summarize(records: Sequence[Trajectory], passages: Mapping[str, Passage]) -> dict:
    """Scores in percent, overall and per dataset, plus the per-trajectory list.

    Retrieval recall/precision count a passage as relevant when it contains a gold answer
    (METHOD.md §4); `support_recall` is the share of gold supporting titles retrieved
    (titles compared by `metrics.title_key`). Trajectories that retrieved nothing count 0 in
    all three.
    """
    scores = score_records(records, passages)
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_dataset[rec.dataset].append(i)
    per_sample = [
        {
            **{key: scores[key].per_sample[i] for key in ANSWER_METRICS},
            "searches": rec.n_searches,
            "tokens": rec.tokens.generated,
            **{key: scores[key].per_sample[i] for key in RETRIEVAL_METRICS},
        }
        for i, rec in enumerate(records)
    ]
    return {
        "overall": _aggregate(records, scores, list(range(len(records)))),
        "by_dataset": {
            name: _aggregate(records, scores, idx) for name, idx in sorted(by_dataset.items())
        },
        "per_sample": per_sample,
    }


def scores_table(results: Mapping[str, dict]) -> str:
    """One row per method and dataset (`all` first) of `summarize`'s scores: metrics.md's table."""
    rows = [
        {"method": method, "dataset": name, **agg}
        for method, res in results.items()
        for name, agg in [("all", res["overall"]), *res["by_dataset"].items()]
    ]
    return markdown_table(
        rows, ["method", "dataset", "n", *SCORES_TABLE_COLUMNS], floats="g", missing="–"
    )


def select_questions(
    questions: Sequence[Question], datasets: Sequence[str] | None, limit: int | None
) -> list[Question]:
    """The dev questions of `datasets` (all if None), the first `limit` of each dataset.

    Raises:
        ValueError: a named dataset has no question in `questions` (naming the ones it has).
    """
    present = list(dict.fromkeys(q.dataset for q in questions))
    if datasets is not None and (missing := [d for d in datasets if d not in present]):
        raise ValueError(
            f"evaluate.datasets names {missing}, which the dev set does not hold "
            f"(it has {present}); see prepare.dev in params.yaml"
        )
    wanted = set(present if datasets is None else datasets)
    taken: dict[str, int] = defaultdict(int)
    out = []
    for q in questions:
        if q.dataset in wanted and (limit is None or taken[q.dataset] < limit):
            taken[q.dataset] += 1
            out.append(q)
    return out


COMPARED_METRICS = ("f1", "em", "support_recall")


def answer_scores(records: Sequence[Trajectory]) -> dict[str, dict[str, float | None]]:
    """Question id → its EM, F1 and supporting-passage recall (0–1), one record per question.

    Support recall is the record's own (`Trajectory.support_recall`, set by evaluation): None
    where it was not measured or the question has no supporting titles.
    """
    return {r.qid: record_scores(r) for r in records}


def record_scores(record: Trajectory) -> dict[str, float | None]:
    """One record's EM and F1 against its gold answers, and its support recall (0–1 or None)."""
    return {
        "em": exact_match(record.prediction, record.answers),
        "f1": f1_score(record.prediction, record.answers),
        "support_recall": record.support_recall,
    }


def prediction_rows(records: Sequence[Trajectory]) -> list[dict[str, Any]]:
    """One flat row per record: what a reader scans in a table, the chat left to the JSONL.

    Method, question, gold answers and prediction, the record's scores (`record_scores`), and
    how it searched: the queries in order, their count and how the chat ended.
    """
    return [
        {
            "method": r.method,
            "dataset": r.dataset,
            "qid": r.qid,
            "question": r.question,
            "answers": " | ".join(r.answers),
            "prediction": r.prediction,
            **record_scores(r),
            "searches": r.n_searches,
            "queries": " | ".join(s.query for s in r.steps),
            "finish_reason": r.finish_reason,
        }
        for r in records
    ]


def compare_records(
    a: Sequence[Trajectory],
    b: Sequence[Trajectory],
    *,
    seed: int = 0,
    n_boot: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Interval]:
    """F1, EM and support recall of `a` minus `b` on the questions both have, with 95% intervals.

    The intervals are `paired_bootstrap`'s (BCa, `n_boot` resamples of the questions). Support
    recall is compared on the questions where both records measured it, and left out where
    there is none (records written before evaluation kept it, or `direct`, which never
    retrieves).

    Raises:
        ValueError: the two share no question.
    """
    sa, sb = answer_scores(a), answer_scores(b)
    common = [q for q in sa if q in sb]
    out = {}
    for m in COMPARED_METRICS:
        both = [q for q in common if sa[q][m] is not None and sb[q][m] is not None]
        if both or m != "support_recall":
            out[m] = paired_bootstrap(
                [sa[q][m] for q in both], [sb[q][m] for q in both], seed=seed, n_boot=n_boot
            )
    return out


def metrics_document(
    summaries: Mapping[str, dict],
    records: Mapping[str, Sequence[Trajectory]],
    seconds: Mapping[str, float],
) -> dict:
    """The evaluate stage's metrics.json (less iteration and model), methods in run order.

    The first method is the primary one: its scores head the document, and it is compared
    question by question with each other method (`<primary>_vs_<method>`).

    Args:
        summaries: method → its `summarize` result.
        records: method → its prediction records.
        seconds: method → wall time of its run.
    """
    if not summaries:
        raise ValueError("no method was evaluated: evaluate.methods in params.yaml is empty")
    primary, *others = summaries
    comparisons = {
        f"{primary}_vs_{m}": {
            k: v.to_dict() for k, v in compare_records(records[primary], records[m]).items()
        }
        for m in others
    }
    return {
        "primary": primary,
        "overall": summaries[primary]["overall"],
        "by_dataset": summaries[primary]["by_dataset"],
        "comparisons": comparisons,
        "seconds": seconds,
        "methods": {
            m: {k: v for k, v in r.items() if k != "per_sample"} for m, r in summaries.items()
        },
    }


# A comparison's columns: metric key → header. Support recall is missing where it was not measured.
DIFFERENCE_COLUMNS = {
    "f1": "ΔF1 [95% CI]",
    "em": "ΔEM [95% CI]",
    "support_recall": "Δsupport recall [95% CI]",
}


def difference_cells(comparison: Mapping[str, dict]) -> dict[str, str]:
    """A comparison's n and its differences with intervals, as table cells ('–' where missing)."""
    cells = {"n": comparison["f1"]["n"]}
    for key, header in DIFFERENCE_COLUMNS.items():
        cells[header] = format_interval(comparison[key]) if key in comparison else "–"
    return cells


def comparisons_table(comparisons: Mapping[str, Mapping[str, dict]]) -> str:
    """One row per comparison of a metrics document: F1, EM, support recall differences."""
    rows = [{"comparison": name, **difference_cells(c)} for name, c in comparisons.items()]
    return markdown_table(rows, ["comparison", "n", *DIFFERENCE_COLUMNS.values()])


BEHAVIOUR_COLUMNS = (
    "n",
    "f1",
    "support_recall",
    "searches_per_question",
    "later_searches",
    "new_support_share",
)


def behaviour_table(behaviour: Mapping[str, Mapping[str, dict]]) -> str:
    """One row per hop count, then per question kind, of `search_behaviour`'s summary."""
    rows = [
        {"group": f"{hops} hops", **agg} for hops, agg in behaviour.get("by_hops", {}).items()
    ] + [{"group": kind, **agg} for kind, agg in behaviour.get("by_type", {}).items()]
    return markdown_table(rows, ["group", *BEHAVIOUR_COLUMNS], floats="g", missing="–")


def metrics_markdown(doc: Mapping[str, dict]) -> str:
    """The tables of a metrics document: scores, comparisons, and search behaviour per hop.

    Every method's scores, then its comparisons if any, then how the primary method searched
    per hop count and question kind (`behaviour.search_behaviour`).
    """
    table = scores_table(doc["methods"])
    if doc["comparisons"]:
        table += "\n" + comparisons_table(doc["comparisons"])
    if doc.get("behaviour"):
        table += "\n" + behaviour_table(doc["behaviour"])
    return table
