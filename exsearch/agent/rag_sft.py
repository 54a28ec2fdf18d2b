"""The `rag_sft` baseline's training set: one-shot RAG chats answered with the gold answer.

A searcher has to beat more than the base model reading one retrieval: it has to beat the same
model *trained* to read one retrieval, on the same questions, for as long. `rag_sft` is that
model. Each of its examples is the chat the `rag` method shows at evaluation (the system prompt,
then the question's top-k passages and the question in one user turn) followed by the gold
answer, weight 1. The stage that trains it (`stages/rag_sft.py`) takes the questions each EM
stage trained on and that stage's optimiser steps, so the two models differ only in what they
were trained to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exsearch import prompts
from exsearch.config import AgentConfig
from exsearch.retrieval import Retriever, format_passage
from exsearch.schema import Passage, Question, Trajectory


def rag_messages(question: Question, passages: Sequence[Passage], passage_words: int) -> list[dict]:
    """The `rag` method's prompt: its system prompt, then passages and question in one turn.

    The same text `SearchAgent` renders for `method="rag"` when the passages fit the context
    budget (tests/test_rag_sft.py checks the two agree).
    """
    rendered = [format_passage(p, i, max_words=passage_words) for i, p in enumerate(passages, 1)]
    return [
        {"role": "system", "content": prompts.RAG_SYSTEM_PROMPT},
        {"role": "user", "content": prompts.rag_turn(question.question, rendered)},
    ]


def rag_sft_examples(
    questions: Sequence[Question], retriever: Retriever, cfg: AgentConfig
) -> list[dict[str, Any]]:
    """One weight-1 example per question: its `rag` prompt and the first gold answer.

    The passages are the top `cfg.top_k` for the question itself, as `rag` retrieves them.
    """
    hits = retriever.search([q.question for q in questions], cfg.top_k) if questions else []
    examples = []
    for q, found in zip(questions, hits, strict=True):
        chat = rag_messages(q, [h.passage for h in found], cfg.passage_max_words)
        chat.append({"role": "assistant", "content": prompts.answer_turn(q.answers[0])})
        examples.append({"messages": chat, "weight": 1.0})
    return examples


def questions_trained_on(
    trajectories: Sequence[Trajectory], pool: Sequence[Question]
) -> list[Question]:
    """The questions of `trajectories` (a stage's training records), in first-seen order.

    Looked up in `pool` (the training questions) by id, so a question sampled K times counts
    once. A trajectory whose question is not in the pool is an error: the two files disagree.
    """
    by_id = {q.id: q for q in pool}
    seen: dict[str, Question] = {}
    for t in trajectories:
        qid = t.qid
        if qid not in by_id:
            raise ValueError(f"question {qid!r} of the trajectories is not in the training pool")
        seen.setdefault(qid, by_id[qid])
    return list(seen.values())
