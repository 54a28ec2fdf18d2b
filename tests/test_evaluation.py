"""Evaluation: which dev questions a campaign scores, and comparisons with their intervals."""

from __future__ import annotations

import pytest

from exsearch.evaluation import compare_records, select_questions
from exsearch.report import checkpoint_comparisons, comparisons_markdown
from exsearch.schema import Question

QUESTIONS = [Question(f"{d}{i}", "?", ["a"], d) for d in ("hotpotqa", "2wiki") for i in range(3)]


def record(qid: str, prediction: str, method: str = "agent") -> dict:
    return {"qid": qid, "prediction": prediction, "answers": ["red car"], "method": method}


def test_datasets_and_limit_pick_the_first_questions_of_each_dataset():
    assert [q.id for q in select_questions(QUESTIONS, ["2wiki"], None)] == [
        "2wiki0",
        "2wiki1",
        "2wiki2",
    ]
    picked = select_questions(QUESTIONS, None, 2)
    assert [q.id for q in picked] == ["hotpotqa0", "hotpotqa1", "2wiki0", "2wiki1"]


def test_an_unknown_dev_dataset_is_named_with_the_ones_there_are():
    with pytest.raises(ValueError, match=r"\['nq'\].*\['hotpotqa', '2wiki'\]"):
        select_questions(QUESTIONS, ["nq"], None)


def test_records_are_compared_question_by_question():
    better = [record("q1", "red car"), record("q2", "red"), record("q3", "blue")]
    worse = [record("q3", "blue"), record("q2", "nothing"), record("q1", "nothing")]
    got = compare_records(better, worse)
    assert got["em"].diff == pytest.approx(100 / 3) and got["em"].n == 3
    assert got["f1"].diff == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert compare_records(better, better)["f1"].diff == 0.0


def test_each_checkpoint_is_compared_with_iter_0_its_previous_one_and_its_rag_baseline():
    preds = {
        "base": [record("q1", "no")],
        "iter_0": [record("q1", "no"), record("q1", "red car", "rag")],
        "iter_1": [record("q1", "red car"), record("q1", "red car", "rag")],
        "iter_2": [record("q1", "red car")],
    }
    previous = {"iter_0": "base", "iter_1": "iter_0", "iter_2": "iter_1"}
    got = checkpoint_comparisons(preds, previous)
    assert set(got["base"]) == set()
    assert set(got["iter_0"]) == {"vs_prev", "agent_vs_rag"}  # vs_prev: the warm-up's gain
    assert set(got["iter_1"]) == {"vs_iter_0", "agent_vs_rag"}  # its previous one is iter_0
    assert set(got["iter_2"]) == {"vs_iter_0", "vs_prev"}
    assert got["iter_1"]["vs_iter_0"]["em"]["diff"] == 100.0
    assert got["iter_2"]["vs_prev"]["em"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "n": 1}
    table = comparisons_markdown(got)
    assert "| iter_1 | iter_0 | 1 | +100.0 [+100.0, +100.0] |" in table
