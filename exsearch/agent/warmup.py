"""Warm-up trajectories written without any LLM, from datasets that carry supporting facts.

A warm-up trajectory shows the model a search strategy it can actually carry out:

1. search the question itself (`first_search="question"`): what one-shot RAG reads, so the agent
   starts from the same evidence as the baseline it has to beat;
2. then, for every supporting paragraph not shown yet (in hop order), search the dataset's
   decomposition question where it has one (MuSiQue), else the paragraph's title, with the gold
   paragraph put among the passages if the retriever missed it;
3. finish once every supporting paragraph has been shown (or `max_steps` searches are spent).

After each search the record holds the supporting sentences of the gold paragraphs just shown,
cut to what the model could read (passages are shown cut to `passage_max_words`) and to
`record_max_words` words around the answer: a record never states what was not on the page,
and a turn stays within the agent's token limit. `first_search="hop"` skips step 1 (one search
per supporting paragraph, the earlier design). The result is in exactly the agent's chat
format (exsearch.prompts), so it trains the same turns the agent later samples.

With document selection on (`select_from > 0`), each search lists `select_from` candidates and
the teacher's selection turn names the gold paragraphs among them first, then the others in
retrieval order, `top_k` in all: the model is taught the format and to put evidence first.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from exsearch import prompts
from exsearch.retrieval import Retriever, format_passage
from exsearch.schema import Passage, Question, Step, Trajectory

FirstSearch = Literal["question", "hop"]
NOTHING_FOUND = "nothing relevant"
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class WarmupShape:
    """How warm-up trajectories are cut: the agent's limits, and the first search."""

    top_k: int
    passage_max_words: int
    max_steps: int
    record_max_words: int = 30
    first_search: FirstSearch = "question"
    select_from: int = 0  # candidates listed per search for a selection turn; 0: no selection


def _visible(p: Passage, max_words: int) -> str:
    return " ".join(p.text.split()[:max_words])


def _clip(text: str, max_words: int, focus: Sequence[str]) -> str:
    """At most `max_words` words of `text`, the window holding the first `focus` string found."""
    words = text.split()
    if len(words) <= max_words:
        return text
    lowered = [w.lower() for w in words]
    for f in focus:
        target = f.lower().split()
        if not target:
            continue
        for i in range(len(words) - len(target) + 1):
            if lowered[i : i + len(target)] == target:
                start = max(0, min(i - max_words // 3, len(words) - max_words))
                return " ".join(words[start : start + max_words])
    return " ".join(words[:max_words])


def _record_for(item: dict, gold: Passage, shape: WarmupShape, answer: str) -> str:
    """What the model can record of one gold paragraph it was shown."""
    visible = _visible(gold, shape.passage_max_words)
    picked = [s for s in item.get("sentences") or [] if s.strip() and s.strip() in visible]
    if not picked:  # the supporting sentence is past the cut: keep the visible opening
        picked = _SENTENCE.split(visible)[:1]
    focus = [a for a in (item.get("sub_answer"), answer) if a]
    return _clip(" ".join(picked), shape.record_max_words, focus)


def _gold_passage(item: dict, by_title: dict[str, list[Passage]]) -> Passage | None:
    candidates = by_title.get(item["title"], [])
    para = item.get("paragraph", "").strip()
    for p in candidates:
        if p.text.strip() == para:
            return p
    return candidates[0] if candidates else None


def _hop_query(item: dict) -> tuple[str, str]:
    """(query, thought) for one hop, the thought saying what the step looks for."""
    query = (item.get("sub_question") or item["title"]).strip()
    need = f": {item['sub_question']}" if item.get("sub_question") else f" about {item['title']}"
    think = f"Next I need to find out{need}"
    return query, think if think.endswith(("?", ".")) else think + "."


def _next_search(
    q: Question,
    support: list[dict],
    golds: list[Passage | None],
    shown: set[str],
    first: bool,
    shape: WarmupShape,
) -> tuple[str, str, Passage | None] | None:
    """(query, thought, gold passage to make sure is shown) of the next search; None: finish."""
    if shape.first_search == "question" and first:
        return q.question, "I search for the question first.", None
    todo = [i for i, g in enumerate(golds) if g is not None and g.id not in shown]
    if not todo:
        return None
    query, think = _hop_query(support[todo[0]])
    return query, think, golds[todo[0]]


def _search(
    retriever: Retriever,
    query: str,
    inject: Passage | None,
    k: int,
    rng: random.Random,
) -> list[Passage]:
    """The top `k`, with `inject` put in a random slot if the retriever missed it."""
    passages = [h.passage for h in retriever.search([query], k)[0]]
    if inject is not None and all(p.id != inject.id for p in passages):
        slot = rng.randrange(len(passages)) if len(passages) >= k else len(passages)
        passages[slot : slot + 1] = [inject]
    return passages


def _rendered(passages: list[Passage], shape: WarmupShape) -> list[str]:
    return [
        format_passage(p, j, max_words=shape.passage_max_words) for j, p in enumerate(passages, 1)
    ]


def _gold_first(candidates: list[Passage], golds: list[Passage | None], keep: int) -> list[int]:
    """The teacher's selection: 1-based numbers of the gold candidates, then the rest, `keep`."""
    gold_ids = {g.id for g in golds if g is not None}
    numbered = list(enumerate(candidates, 1))
    order = [n for n, p in numbered if p.id in gold_ids]
    order += [n for n, p in numbered if p.id not in gold_ids]
    return order[:keep]


def _search_turns(
    candidates: list[Passage], golds: list[Passage | None], shape: WarmupShape
) -> tuple[list[dict[str, str]], list[Passage]]:
    """The turns after a search, and the passages they show.

    Without selection: the documents turn of the candidates (the top `top_k`). With it: the
    candidate list, the teacher's selection (`_gold_first`) and the documents turn it shows.
    """
    if not shape.select_from or not candidates:
        docs = prompts.documents_turn(_rendered(candidates, shape))
        return [{"role": "user", "content": docs}], candidates
    numbers = _gold_first(candidates, golds, shape.top_k)
    shown = [candidates[n - 1] for n in numbers]
    turns = [
        {"role": "user", "content": prompts.candidates_turn(_rendered(candidates, shape))},
        {"role": "assistant", "content": prompts.select_turn(numbers)},
        {"role": "user", "content": prompts.documents_turn(_rendered(shown, shape))},
    ]
    return turns, shown


def _record_of_search(
    support: list[dict],
    golds: list[Passage | None],
    passages: list[Passage],
    shown: set[str],
    shape: WarmupShape,
    answer: str,
) -> tuple[str, set[str]]:
    """The record after a search, and the ids of the gold passages it showed.

    The record holds what the gold passages shown for the first time say, or NOTHING_FOUND.
    """
    ids = {p.id for p in passages}
    found = [
        _record_for(item, g, shape, answer)
        for item, g in zip(support, golds, strict=True)
        if g is not None and g.id in ids and g.id not in shown
    ]
    record = _clip(" ".join(found), shape.record_max_words, [answer]) or NOTHING_FOUND
    return record, {g.id for g in golds if g is not None and g.id in ids}


def _closing_turns(q: Question, record: str | None, answer: str) -> list[dict[str, str]]:
    """The last record and the finish, the request for the answer, and the gold answer."""
    finish = prompts.action_turn(record=record, think="I have enough to answer.")
    return [
        {"role": "assistant", "content": finish},
        {"role": "user", "content": prompts.answer_request(q.question)},
        {"role": "assistant", "content": prompts.answer_turn(answer)},
    ]


def build_trajectory(
    q: Question,
    retriever: Retriever,
    by_title: dict[str, list[Passage]],
    shape: WarmupShape,
    rng: random.Random,
) -> Trajectory | None:
    """One warm-up trajectory for `q`, or None when it has no supporting facts."""
    support = q.extra.get("support") or []
    if not support:
        return None
    golds = [_gold_passage(item, by_title) for item in support]
    answer = q.answers[0]
    system = (
        prompts.select_system_prompt(shape.top_k) if shape.select_from else prompts.SYSTEM_PROMPT
    )
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": prompts.question_turn(q.question)},
    ]
    steps: list[Step] = []
    shown: set[str] = set()  # ids of the gold passages shown so far
    record: str | None = None  # the record the next assistant turn opens with
    while len(steps) < shape.max_steps and (
        search := _next_search(q, support, golds, shown, not steps, shape)
    ):
        query, think, inject = search
        candidates = _search(retriever, query, inject, shape.select_from or shape.top_k, rng)
        turns, passages = _search_turns(candidates, golds, shape)
        messages += [
            {
                "role": "assistant",
                "content": prompts.action_turn(record=record, think=think, query=query),
            },
            *turns,
        ]
        record, found = _record_of_search(support, golds, passages, shown, shape, answer)
        shown |= found
        listed = [p.id for p in candidates] if shape.select_from else []
        steps.append(Step(query, [p.id for p in passages], record, think, candidate_ids=listed))
    return Trajectory.of_question(
        q,
        sample=0,
        method="warmup",
        messages=messages + _closing_turns(q, record, answer),
        steps=steps,
        prediction=answer,
        finish_reason="final",
    )


def build_trajectories(
    questions: Sequence[Question],
    retriever: Retriever,
    corpus: Iterable[Passage],
    shape: WarmupShape,
    *,
    seed: int = 0,
) -> tuple[list[Trajectory], int]:
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
        traj = build_trajectory(q, retriever, by_title, shape, rng)
        if traj is None:
            skipped += 1
        else:
            out.append(traj)
    return out, skipped
