"""How the agent searches per kind of question: more searches where one cannot do, or not.

A searcher worth the name searches more on questions with more hops and, when it searches
again, brings back supporting passages it has not seen yet. Per question kind (the dataset's own
type: HotpotQA bridge/comparison, 2Wiki's four types, MuSiQue 2/3/4 hops) and per hop count (the
supporting paragraphs of the question), this gives: n, F1, supporting-passage recall, searches
per question, and of the searches after the first, the share that showed a supporting passage
no earlier search of the trajectory had shown (`new_support_share`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from statistics import fmean

from exsearch.evaluation.summary import score_records
from exsearch.metrics import title_key
from exsearch.schema import Passage, Question, Trajectory


def question_kind(q: Question) -> str:
    """The dataset and its own type: 'hotpotqa bridge', '2wiki inference', 'musique 3hop'."""
    kind = str(q.extra.get("type") or "")
    kind = re.sub(r"^(\d+hop)\d*$", r"\1", kind)  # MuSiQue's 3hop1, 3hop2 → 3hop
    return f"{q.dataset} {kind}".strip()


def hop_count(q: Question) -> int:
    """How many supporting paragraphs the question needs (0 when the source gives none)."""
    return len(q.extra.get("support") or q.supporting_titles)


def later_searches(record: Trajectory, passages: Mapping[str, Passage]) -> tuple[int, int]:
    """(searches after the first, those that showed a supporting passage not shown before)."""
    wanted = {title_key(t) for t in record.supporting_titles}
    seen: set[str] = set()
    later = new = 0
    for n, step in enumerate(record.steps):
        titles = {title_key(passages[p].title) for p in step.passage_ids if p in passages}
        found = (titles & wanted) - seen
        if n:
            later += 1
            new += bool(found)
        seen |= titles
    return later, new


def _group(idx: list[int], records: Sequence[Trajectory], scores: dict, gains: list) -> dict:
    later = sum(gains[i][0] for i in idx)
    recalls = [scores["support_recall"].per_sample[i] for i in idx]
    recalls = [r for r in recalls if r is not None]
    return {
        "n": len(idx),
        "f1": round(100 * fmean(scores["f1"].per_sample[i] for i in idx), 2),
        "support_recall": round(100 * fmean(recalls), 2) if recalls else None,
        "searches_per_question": round(fmean(records[i].n_searches for i in idx), 3),
        "later_searches": later,
        "new_support_share": round(sum(g[1] for g in (gains[i] for i in idx)) / later, 3)
        if later
        else None,
    }


def search_behaviour(
    records: Sequence[Trajectory], passages: Mapping[str, Passage], questions: Sequence[Question]
) -> dict[str, dict[str, dict]]:
    """`by_type` (question kind) and `by_hops` (hop count) summaries of one method's records.

    Records whose question is not in `questions` are left out.
    """
    by_id = {q.id: q for q in questions}
    kept = [r for r in records if r.qid in by_id]
    if not kept:
        return {"by_type": {}, "by_hops": {}}
    scores = score_records(kept, passages)
    gains = [later_searches(r, passages) for r in kept]
    by_type: dict[str, list[int]] = defaultdict(list)
    by_hops: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(kept):
        by_type[question_kind(by_id[r.qid])].append(i)
        by_hops[hop_count(by_id[r.qid])].append(i)
    return {
        "by_type": {k: _group(v, kept, scores, gains) for k, v in sorted(by_type.items())},
        "by_hops": {str(k): _group(v, kept, scores, gains) for k, v in sorted(by_hops.items())},
    }
