"""Warm-up trajectories written without any LLM, from datasets that carry supporting facts.

One search step per supporting paragraph (in hop order): the sub-query is the dataset's
decomposition question where it has one (MuSiQue), else the paragraph's title; the passages are
what the real retriever returns for it, with the gold paragraph put among them if BM25 missed it;
the record is the supporting sentence(s) or the sub-answer. The result is in exactly the agent's
chat format (exsearch.prompts), so it trains the same turns the agent later samples.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from exsearch import prompts
from exsearch.agent import Retriever
from exsearch.retrieval import format_passage
from exsearch.schema import Passage, Question


def _record_text(item: dict) -> str:
    sentences = [s.strip() for s in item.get("sentences") or [] if s.strip()]
    if sentences:
        return " ".join(sentences)
    return item.get("sub_answer") or item.get("paragraph", "")[:300]


def _query(item: dict) -> str:
    return (item.get("sub_question") or item["title"]).strip()


def _gold_passage(item: dict, by_title: dict[str, list[Passage]]) -> Passage | None:
    candidates = by_title.get(item["title"], [])
    para = item.get("paragraph", "").strip()
    for p in candidates:
        if p.text.strip() == para:
            return p
    return candidates[0] if candidates else None


def build_trajectory(
    q: Question,
    retriever: Retriever,
    by_title: dict[str, list[Passage]],
    *,
    top_k: int,
    passage_max_words: int,
    rng: random.Random,
) -> dict | None:
    """One warm-up trajectory for `q`, or None when it has no supporting facts."""
    support = q.extra.get("support") or []
    if not support:
        return None
    queries = [_query(item) for item in support]
    results = retriever.search(queries, top_k)
    messages = [
        {"role": "system", "content": prompts.SYSTEM_PROMPT},
        {"role": "user", "content": prompts.question_turn(q.question)},
    ]
    steps = []
    record = None
    for i, (item, query, hits) in enumerate(zip(support, queries, results, strict=True)):
        passages = [h.passage for h in hits]
        gold = _gold_passage(item, by_title)
        if gold is not None and all(p.id != gold.id for p in passages):
            slot = rng.randrange(len(passages)) if len(passages) >= top_k else len(passages)
            passages[slot : slot + 1] = [gold]
        # What the step looks for, said without knowledge the model would not have yet.
        need = (
            f": {item['sub_question']}" if item.get("sub_question") else f" about {item['title']}"
        )
        think = f"{'Next I' if i else 'I'} need to find out{need}"
        think = think if think.endswith(("?", ".")) else think + "."
        messages.append(
            {
                "role": "assistant",
                "content": prompts.action_turn(record=record, think=think, query=query),
            }
        )
        rendered = [
            format_passage(p, j, max_words=passage_max_words) for j, p in enumerate(passages, 1)
        ]
        messages.append({"role": "user", "content": prompts.documents_turn(rendered)})
        record = _record_text(item)
        steps.append(
            {
                "query": query,
                "passage_ids": [p.id for p in passages],
                "record": record,
                "think": think,
            }
        )
    answer = q.answers[0]
    messages += [
        {
            "role": "assistant",
            "content": prompts.action_turn(record=record, think="I have enough to answer."),
        },
        {"role": "user", "content": prompts.answer_request(q.question)},
        {"role": "assistant", "content": prompts.answer_turn(answer)},
    ]
    return {
        "qid": q.id,
        "sample": 0,
        "seed": None,
        "method": "warmup",
        "dataset": q.dataset,
        "question": q.question,
        "answers": q.answers,
        "supporting_titles": q.supporting_titles,
        "messages": messages,
        "steps": steps,
        "prediction": answer,
        "finish_reason": "final",
        "n_searches": len(steps),
    }


def build_trajectories(
    questions: Sequence[Question],
    retriever: Retriever,
    corpus: Iterable[Passage],
    *,
    top_k: int,
    passage_max_words: int,
    seed: int = 0,
) -> tuple[list[dict], int]:
    """Warm-up trajectories for every question with supporting facts; also the count skipped.

    `corpus` is read once, keeping only passages whose title a supporting fact names, so a
    streamed corpus of any size fits in memory.
    """
    wanted = {item["title"] for q in questions for item in q.extra.get("support") or []}
    by_title: dict[str, list[Passage]] = {}
    for p in corpus:
        if p.title in wanted:
            by_title.setdefault(p.title, []).append(p)
    rng = random.Random(seed)
    out, skipped = [], 0
    for q in questions:
        traj = build_trajectory(
            q, retriever, by_title, top_k=top_k, passage_max_words=passage_max_words, rng=rng
        )
        if traj is None:
            skipped += 1
        else:
            out.append(traj)
    return out, skipped
