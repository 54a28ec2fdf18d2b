"""exsearch/evaluation.py: per-trajectory scores follow the conventions of exsearch/metrics.py;
which dev questions a campaign scores; comparisons with their intervals."""

import pytest

from exsearch.evaluation import compare_records, score_record, select_questions, summarize
from exsearch.report import checkpoint_comparisons, comparisons_markdown
from exsearch.schema import Passage, Question

LIMA = Passage("p1", "Lima", "Lima is the capital of Peru.")
PERU = Passage("p2", "Peru", "Peru is a country in South America.")
PASSAGES = {p.id: p for p in (LIMA, PERU)}


def record(method="agent", steps=(), prediction="Lima", answers=("Lima",), titles=("Lima",)):
    return {
        "qid": "q1",
        "method": method,
        "dataset": "toy",
        "prediction": prediction,
        "answers": list(answers),
        "supporting_titles": list(titles),
        "steps": [{"query": "q", "passage_ids": list(ids)} for ids in steps],
        "tokens": {"generated": 7},
        "finish_reason": "stop",
    }


def test_a_trajectory_without_search_counts_zero_in_retrieval_scores():
    scores = score_record(record(steps=()), PASSAGES)
    assert (scores["recall"], scores["precision"], scores["support_recall"]) == (0.0, 0.0, 0.0)


def test_searches_that_returned_nothing_count_zero_too():
    scores = score_record(record(steps=[[]]), PASSAGES)
    assert (scores["recall"], scores["precision"], scores["support_recall"]) == (0.0, 0.0, 0.0)


def test_a_method_that_never_retrieves_has_no_retrieval_scores():
    scores = score_record(record(method="direct"), PASSAGES)
    assert (scores["recall"], scores["precision"], scores["support_recall"]) == (None, None, None)
    assert scores["em"] == 1.0


def test_support_recall_is_undefined_only_without_supporting_titles():
    assert score_record(record(titles=()), PASSAGES)["support_recall"] is None


def test_supporting_titles_are_matched_casefolded_as_in_metrics():
    scores = score_record(record(steps=[["p1"]], titles=("LIMA", "peru")), PASSAGES)
    assert scores["support_recall"] == 0.5
    assert score_record(record(steps=[["p1", "p2"]], titles=("LIMA", "peru")), PASSAGES)[
        "support_recall"
    ] == pytest.approx(1.0)


def test_an_empty_prediction_gets_nothing_for_a_gold_that_normalises_to_nothing():
    scores = score_record(record(prediction="", answers=("The",)), PASSAGES)
    assert (scores["em"], scores["f1"], scores["acc"]) == (0.0, 0.0, 0.0)


def test_summary_means_include_the_trajectories_that_never_searched():
    records = [record(steps=[["p1"]]), record(steps=())]
    overall = summarize(records, PASSAGES)["overall"]
    assert overall["recall"] == 50.0 and overall["support_recall"] == 50.0


# --- question selection and paired comparisons ---------------------------------------------

QUESTIONS = [Question(f"{d}{i}", "?", ["a"], d) for d in ("hotpotqa", "2wiki") for i in range(3)]


def answered(qid: str, prediction: str, method: str = "agent") -> dict:
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
    better = [answered("q1", "red car"), answered("q2", "red"), answered("q3", "blue")]
    worse = [answered("q3", "blue"), answered("q2", "nothing"), answered("q1", "nothing")]
    got = compare_records(better, worse)
    assert got["em"].diff == pytest.approx(100 / 3) and got["em"].n == 3
    assert got["f1"].diff == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert compare_records(better, better)["f1"].diff == 0.0


def test_each_checkpoint_is_compared_with_iter_0_its_previous_one_and_its_rag_baseline():
    preds = {
        "base": [answered("q1", "no")],
        "iter_0": [answered("q1", "no"), answered("q1", "red car", "rag")],
        "iter_1": [answered("q1", "red car"), answered("q1", "red car", "rag")],
        "iter_2": [answered("q1", "red car")],
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
