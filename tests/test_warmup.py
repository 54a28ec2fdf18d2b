"""LLM-free warm-up trajectories: the agent's format, built from supporting facts."""

from __future__ import annotations

import json

from exsearch import prompts
from exsearch.agent.warmup import NOTHING_FOUND, WarmupShape, build_trajectories
from exsearch.agent.warmup_set import warmup_train_config
from exsearch.config.params import IndexConfig
from exsearch.config.training import TrainConfig, WarmupConfig
from exsearch.retrieval import BM25Retriever
from exsearch.schema import Passage, Question, Trajectory

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


def build(top_k=2, question=QUESTION, **shape):
    retriever = BM25Retriever.build(CORPUS, IndexConfig())
    shape = {"passage_max_words": 40, "max_steps": 6, "first_search": "hop", **shape}
    return build_trajectories([question], retriever, CORPUS, WarmupShape(top_k=top_k, **shape))


def test_one_step_per_supporting_paragraph_in_the_agent_format():
    (traj,), skipped = build()
    assert skipped == 0
    steps, answer = prompts.parse_steps(traj.messages)
    assert [s.query for s in steps] == [GOLD_A.title, GOLD_B.title]
    assert [s.record for s in steps] == [GOLD_A.text, GOLD_B.text]
    assert answer == "Chief of Protocol"
    assert prompts.parse_turn(traj.messages[-3]["content"]).finish
    roles = [m["role"] for m in traj.messages]
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


def test_a_warmup_record_is_written_as_it_always_was_without_decoding_keys():
    (traj,), _ = build()
    line = traj.to_dict()
    assert list(line) == [
        "qid",
        "sample",
        "seed",
        "method",
        "dataset",
        "question",
        "answers",
        "supporting_titles",
        "messages",
        "steps",
        "prediction",
        "finish_reason",
        "n_searches",
    ]
    assert (line["sample"], line["seed"], line["method"], line["n_searches"]) == (
        0,
        None,
        "warmup",
        2,
    )
    assert [list(s) for s in line["steps"]] == [["query", "passage_ids", "record", "think"]] * 2
    assert Trajectory.from_dict(json.loads(json.dumps(line))) == traj


def test_the_gold_paragraph_is_always_among_the_passages():
    (traj,), _ = build(top_k=2)
    for step, gold in zip(traj.steps, (GOLD_A, GOLD_B), strict=True):
        assert gold.id in step.passage_ids and len(step.passage_ids) <= 2


def test_questions_without_supporting_facts_are_skipped_and_counted():
    retriever = BM25Retriever.build(CORPUS, IndexConfig())
    bare = Question("x", "Who?", ["Ann"], "nq")
    trajs, skipped = build_trajectories([bare], retriever, CORPUS, WarmupShape(2, 40, max_steps=6))
    assert trajs == [] and skipped == 1


def test_decomposition_questions_become_the_queries():
    support = [dict(s) for s in QUESTION.extra["support"]]
    support[0]["sub_question"] = "Who played Corliss Archer in Kiss and Tell?"
    q = Question(
        QUESTION.id, QUESTION.question, QUESTION.answers, "musique", extra={"support": support}
    )
    (traj,), _ = build(question=q)
    assert traj.steps[0].query == "Who played Corliss Archer in Kiss and Tell?"
    assert GOLD_A.title not in traj.messages[2]["content"]  # the thought does not leak the title


def test_the_first_search_is_the_question_and_what_it_found_is_not_searched_again():
    (traj,), _ = build(top_k=3, first_search="question")
    steps, answer = prompts.parse_steps(traj.messages)
    assert steps[0].query == QUESTION.question
    shown_first = set(traj.steps[0].passage_ids)
    later = [s.query for s in steps[1:]]
    # every supporting paragraph is shown once; a title is searched only if the question missed it
    for gold in (GOLD_A, GOLD_B):
        assert (gold.title in later) == (gold.id not in shown_first)
    assert answer == "Chief of Protocol"


def test_records_hold_only_what_the_cut_passages_show():
    (traj,), _ = build(passage_max_words=4)
    for step in traj.steps:
        assert step.record != NOTHING_FOUND
        assert len(step.record.split()) <= 4  # the visible opening, not the whole sentence


def test_records_are_cut_around_the_answer():
    (traj,), _ = build(record_max_words=5)
    assert "Chief of Protocol" in traj.steps[-1].record
    assert len(traj.steps[-1].record.split()) == 5


def test_searches_stop_at_max_steps_and_the_trajectory_still_finishes():
    (traj,), _ = build(first_search="question", max_steps=1)
    assert len(traj.steps) == 1
    assert prompts.parse_turn(traj.messages[-3]["content"]).finish


def test_the_warmup_trains_with_its_own_epochs_and_rate_and_no_em_only_setting():
    warm = WarmupConfig(epochs=1.0, learning_rate=5e-4)
    em = TrainConfig(
        epochs=3.0,
        learning_rate=1e-5,
        weighted={"min_weight": 0.5},
        start_from="warmup",
        replay=8,
    )
    got = warmup_train_config(em, warm)
    assert (got.epochs, got.learning_rate) == (1.0, 5e-4)
    assert got == warmup_train_config(TrainConfig(), warm)  # EM-only keys leave it unchanged
    assert got.weighted.min_weight == 0.0  # warm-up examples weigh 1: none may be dropped
