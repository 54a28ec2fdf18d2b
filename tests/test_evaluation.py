"""exsearch/evaluation.py: per-trajectory scores follow the conventions of exsearch/metrics.py."""

import pytest

from exsearch.evaluation import score_record, summarize
from exsearch.schema import Passage

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
