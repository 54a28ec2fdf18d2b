"""LLM-free warm-up trajectories: the agent's format, built from supporting facts."""

from __future__ import annotations

from exsearch import prompts
from exsearch.config import IndexConfig
from exsearch.retrieval import BM25Retriever
from exsearch.schema import Passage, Question
from exsearch.warmup import build_trajectories

GOLD_A = Passage(
    "a",
    "Kiss and Tell (1945 film)",
    "Kiss and Tell is a 1945 film starring Shirley Temple as Corliss Archer.",
)
GOLD_B = Passage(
    "b", "Shirley Temple", "Shirley Temple later served as Chief of Protocol of the United States."
)
NOISE = [
    Passage(f"n{i}", f"Kiss and Tell {i}", "Kiss and Tell was also a song, a play and a show.")
    for i in range(6)
]
CORPUS = [GOLD_A, GOLD_B, *NOISE]

QUESTION = Question(
    id="q",
    question="What position was held by the woman who played Corliss Archer in Kiss and Tell?",
    answers=["Chief of Protocol"],
    dataset="hotpotqa",
    supporting_titles=[GOLD_A.title, GOLD_B.title],
    extra={
        "support": [
            {
                "title": GOLD_A.title,
                "paragraph": GOLD_A.text,
                "sentences": [GOLD_A.text],
                "sub_question": None,
                "sub_answer": None,
            },
            {
                "title": GOLD_B.title,
                "paragraph": GOLD_B.text,
                "sentences": [GOLD_B.text],
                "sub_question": None,
                "sub_answer": None,
            },
        ]
    },
)


def build(top_k=2):
    retriever = BM25Retriever.build(CORPUS, IndexConfig())
    return build_trajectories([QUESTION], retriever, CORPUS, top_k=top_k, passage_max_words=40)


def test_one_step_per_supporting_paragraph_in_the_agent_format():
    (traj,), skipped = build()
    assert skipped == 0
    steps, answer = prompts.parse_steps(traj["messages"])
    assert [s.query for s in steps] == [GOLD_A.title, GOLD_B.title]
    assert [s.record for s in steps] == [GOLD_A.text, GOLD_B.text]
    assert answer == "Chief of Protocol"
    assert prompts.parse_turn(traj["messages"][-3]["content"]).finish
    roles = [m["role"] for m in traj["messages"]]
    assert roles == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]


def test_the_gold_paragraph_is_always_among_the_passages():
    (traj,), _ = build(top_k=2)
    for step, gold in zip(traj["steps"], (GOLD_A, GOLD_B), strict=True):
        assert gold.id in step["passage_ids"] and len(step["passage_ids"]) <= 2


def test_questions_without_supporting_facts_are_skipped_and_counted():
    retriever = BM25Retriever.build(CORPUS, IndexConfig())
    bare = Question("x", "Who?", ["Ann"], "nq")
    trajs, skipped = build_trajectories([bare], retriever, CORPUS, top_k=2, passage_max_words=40)
    assert trajs == [] and skipped == 1


def test_decomposition_questions_become_the_queries():
    support = [dict(s) for s in QUESTION.extra["support"]]
    support[0]["sub_question"] = "Who played Corliss Archer in Kiss and Tell?"
    q = Question(
        QUESTION.id, QUESTION.question, QUESTION.answers, "musique", extra={"support": support}
    )
    retriever = BM25Retriever.build(CORPUS, IndexConfig())
    (traj,), _ = build_trajectories([q], retriever, CORPUS, top_k=2, passage_max_words=40)
    assert traj["steps"][0]["query"] == "Who played Corliss Archer in Kiss and Tell?"
    assert GOLD_A.title not in traj["messages"][2]["content"]  # the thought does not leak the title
