"""Score agent records: answer quality, retrieval quality and behaviour, per dataset and overall.

Also the comparisons a campaign is judged by: two sets of records (two checkpoints, or the
agent and the RAG baseline of one checkpoint) paired by question, with a bootstrap interval on
their F1 and EM difference (`compare_records`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from statistics import fmean

from exsearch.metrics import (
    Interval,
    cover_em,
    exact_match,
    f1_score,
    paired_bootstrap,
    passage_has_answer,
    supporting_recall,
)
from exsearch.schema import Passage, Question

ANSWER_METRICS = ("em", "f1", "acc")
# Methods that never retrieve by design: retrieval metrics do not apply to them.
NO_RETRIEVAL = frozenset({"direct"})


def score_record(record: dict, passages: Mapping[str, Passage]) -> dict:
    """Per-trajectory scores, with the conventions of `exsearch.metrics`.

    Retrieval recall and precision are 0 for a trajectory that retrieved nothing, and None
    only for a method that never retrieves (`direct`); supporting-passage recall is also None
    for a question without supporting titles.
    """
    pred, golds = record["prediction"], record["answers"]
    seen: dict[str, Passage] = {}
    for step in record["steps"]:
        for pid in step["passage_ids"]:
            if pid in passages:
                seen.setdefault(pid, passages[pid])
    retrieved = list(seen.values())
    scores = {
        "em": exact_match(pred, golds),
        "f1": f1_score(pred, golds),
        "acc": cover_em(pred, golds),
        "searches": len(record["steps"]),
        "tokens": record["tokens"]["generated"],
        "recall": None,
        "precision": None,
        "support_recall": None,
    }
    if record.get("method") in NO_RETRIEVAL:
        return scores
    hits = [passage_has_answer(p, golds) for p in retrieved]
    scores["recall"] = float(any(hits))
    scores["precision"] = sum(hits) / len(hits) if hits else 0.0
    titles = record.get("supporting_titles") or []
    scores["support_recall"] = supporting_recall([retrieved], [titles]).per_sample[0]
    return scores


def _aggregate(rows: Sequence[dict], records: Sequence[dict]) -> dict:
    out: dict = {"n": len(rows)}
    for key in (*ANSWER_METRICS, "recall", "precision", "support_recall"):
        vals = [r[key] for r in rows if r[key] is not None]
        out[key] = round(100 * fmean(vals), 2) if vals else None
    out["searches_per_question"] = round(fmean(r["searches"] for r in rows), 3) if rows else 0.0
    out["tokens_generated"] = sum(r["tokens"] for r in rows)
    reasons: dict[str, int] = defaultdict(int)
    for rec in records:
        reasons[rec["finish_reason"]] += 1
    out["finish_reasons"] = dict(sorted(reasons.items()))
    return out


def summarize(records: Sequence[dict], passages: Mapping[str, Passage]) -> dict:
    """Scores in percent, overall and per dataset, plus the per-trajectory list.

    Retrieval recall/precision count a passage as relevant when it contains a gold answer
    (METHOD.md §4); `support_recall` is the share of gold supporting titles retrieved
    (titles compared case-folded). Trajectories that retrieved nothing count 0 in all three.
    """
    rows = [score_record(r, passages) for r in records]
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_dataset[rec["dataset"]].append(i)
    return {
        "overall": _aggregate(rows, records),
        "by_dataset": {
            name: _aggregate([rows[i] for i in idx], [records[i] for i in idx])
            for name, idx in sorted(by_dataset.items())
        },
        "per_sample": rows,
    }


def markdown_table(results: Mapping[str, dict]) -> str:
    """One row per method and dataset: the table the evaluate stage writes."""
    cols = ["em", "f1", "acc", "recall", "precision", "support_recall", "searches_per_question"]
    head = "| method | dataset | n | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for method, res in results.items():
        for name, agg in [("all", res["overall"]), *res["by_dataset"].items()]:
            cells = ["–" if agg[c] is None else f"{agg[c]:g}" for c in cols]
            lines.append(f"| {method} | {name} | {agg['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


COMPARED_METRICS = ("f1", "em")


def answer_scores(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Question id → its EM and F1 (0–1), one record per question."""
    return {
        str(r["qid"]): {
            "em": exact_match(r["prediction"], r["answers"]),
            "f1": f1_score(r["prediction"], r["answers"]),
        }
        for r in records
    }


def compare_records(
    a: Sequence[dict], b: Sequence[dict], *, seed: int = 0, n_boot: int = 2000
) -> dict[str, Interval]:
    """F1 and EM of `a` minus those of `b` on the questions both answered, with 95% intervals.

    Raises:
        ValueError: the two share no question.
    """
    sa, sb = answer_scores(a), answer_scores(b)
    common = [q for q in sa if q in sb]
    return {
        m: paired_bootstrap(
            [sa[q][m] for q in common], [sb[q][m] for q in common], seed=seed, n_boot=n_boot
        )
        for m in COMPARED_METRICS
    }
