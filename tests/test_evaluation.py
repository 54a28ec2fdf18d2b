"""exsearch/evaluation/summary.py: the reported scores are exsearch/metrics.py's, averaged per dataset
and overall; which dev questions a campaign scores; comparisons with their intervals; the
metrics document and its tables."""

import dataclasses

import pytest

from exsearch.agent import Decoding
from exsearch.evaluation.checkpoint import evaluate_methods
from exsearch.evaluation.summary import (
    compare_records,
    metrics_document,
    metrics_markdown,
    prediction_rows,
    retrieved_passages,
    score_records,
    select_questions,
    summarize,
)
from exsearch.metrics import (
    qa_scores,
    retrieval_precision_at_k,
    retrieval_recall_at_k,
    supporting_recall,
)
from exsearch.report.campaign import checkpoint_comparisons, comparisons_markdown
from exsearch.schema import Passage, Question, Step, TokenCounts, Trajectory

LIMA = Passage("p1", "Lima", "Lima is the capital of Peru.")
PERU = Passage("p2", "Peru", "Peru is a country in South America.")
PASSAGES = {p.id: p for p in (LIMA, PERU)}


def record(
    method="agent",
    steps=(),
    prediction="Lima",
    answers=("Lima",),
    titles=("Lima",),
    dataset="toy",
    qid="q1",
):
    return Trajectory(
        qid=qid,
        method=method,
        dataset=dataset,
        prediction=prediction,
        answers=list(answers),
        supporting_titles=list(titles),
        messages=[],
        steps=[Step("q", list(ids)) for ids in steps],
        tokens=TokenCounts(generated=7, last_prompt=100),
        finish_reason="stop",
    )


def score_record(rec: Trajectory, passages=PASSAGES) -> dict:
    """One trajectory's scores, as `score_records` gives them for a list of one."""
    return {key: result.per_sample[0] for key, result in score_records([rec], passages).items()}


def test_a_prediction_row_holds_the_answer_its_scores_and_how_it_searched():
    rec = dataclasses.replace(
        record(steps=[["p2"], ["p1"]], prediction="Lima, Peru", answers=("Lima", "Lima city")),
        steps=[Step("capital of Peru", ["p2"]), Step("Lima", ["p1"])],
        support_recall=1.0,
    )
    (row,) = prediction_rows([rec])
    assert row == {
        "method": "agent",
        "dataset": "toy",
        "qid": "q1",
        "question": "",
        "answers": "Lima | Lima city",
        "prediction": "Lima, Peru",
        "em": 0.0,
        "f1": pytest.approx(2 / 3),
        "support_recall": 1.0,
        "searches": 2,
        "queries": "capital of Peru | Lima",
        "finish_reason": "stop",
    }


def test_a_trajectory_without_search_counts_zero_in_retrieval_scores():
    scores = score_record(record(steps=()))
    assert (scores["recall"], scores["precision"], scores["support_recall"]) == (0.0, 0.0, 0.0)


def test_searches_that_returned_nothing_count_zero_too():
    scores = score_record(record(steps=[[]]))
    assert (scores["recall"], scores["precision"], scores["support_recall"]) == (0.0, 0.0, 0.0)


def test_a_method_that_never_retrieves_has_no_retrieval_scores():
    scores = score_record(record(method="direct"))
    assert (scores["recall"], scores["precision"], scores["support_recall"]) == (None, None, None)
    assert scores["em"] == 1.0


def test_support_recall_is_undefined_only_without_supporting_titles():
    assert score_record(record(titles=()))["support_recall"] is None


def test_supporting_titles_are_matched_casefolded_as_in_metrics():
    scores = score_record(record(steps=[["p1"]], titles=("LIMA", "peru")))
    assert scores["support_recall"] == 0.5
    both = score_record(record(steps=[["p1", "p2"]], titles=("LIMA", "peru")))
    assert both["support_recall"] == pytest.approx(1.0)


def test_an_empty_prediction_gets_nothing_for_a_gold_that_normalises_to_nothing():
    scores = score_record(record(prediction="", answers=("The",)))
    assert (scores["em"], scores["f1"], scores["acc"]) == (0.0, 0.0, 0.0)


def test_summary_means_include_the_trajectories_that_never_searched():
    records = [record(steps=[["p1"]]), record(steps=())]
    overall = summarize(records, PASSAGES)["overall"]
    assert overall["recall"] == 50.0 and overall["support_recall"] == 50.0


def test_a_trajectory_is_scored_on_the_distinct_passages_of_all_its_searches():
    rec = record(steps=[["p2", "unknown"], ["p1", "p2"], []])
    assert retrieved_passages(rec, PASSAGES) == [PERU, LIMA]


MIXED = [
    record(steps=[["p2"], ["p1"]], titles=("Lima", "Peru"), dataset="a"),
    record(steps=[["p2"]], prediction="Peru", answers=("Lima", "The"), dataset="b"),
    record(method="direct", prediction="lima.", titles=("Peru",), dataset="a"),
    record(steps=(), prediction="", answers=("Peru",), titles=(), dataset="b"),
    record(steps=[["p1", "p2"]], prediction="Lima, Peru", titles=("PERU",), dataset="a"),
]


def percent(value):
    return None if value is None else round(100 * value, 2)


@pytest.mark.parametrize("dataset", [None, "a", "b"])
def test_reported_scores_are_the_metrics_means_in_percent(dataset):
    """What a report shows is `exsearch.metrics` over the dataset's trajectories: retrieval
    scores over everything each retrieved, leaving out methods that never retrieve."""
    summary = summarize(MIXED, PASSAGES)
    got = summary["overall"] if dataset is None else summary["by_dataset"][dataset]
    recs = [r for r in MIXED if dataset in (None, r.dataset)]
    answers = qa_scores([r.prediction for r in recs], [r.answers for r in recs])
    searching = [r for r in recs if r.method != "direct"]
    shown = [retrieved_passages(r, PASSAGES) for r in searching]
    golds = [r.answers for r in searching]
    expected = {
        **{key: percent(result.value) for key, result in answers.items()},
        "recall": percent(retrieval_recall_at_k(shown, golds).value),
        "precision": percent(retrieval_precision_at_k(shown, golds).value),
        "support_recall": percent(
            supporting_recall(shown, [r.supporting_titles for r in searching]).value
        ),
    }
    assert {key: got[key] for key in expected} == expected
    assert got["n"] == len(recs)
    assert got["searches_per_question"] == round(sum(len(r.steps) for r in recs) / len(recs), 3)


def test_per_dataset_summaries_come_in_name_order_and_count_their_endings():
    summary = summarize(MIXED, PASSAGES)
    assert list(summary["by_dataset"]) == ["a", "b"]
    assert summary["by_dataset"]["a"]["finish_reasons"] == {"stop": 3}
    assert summary["overall"]["tokens_generated"] == 7 * len(MIXED)
    assert [row["recall"] for row in summary["per_sample"]] == [1.0, 0.0, None, 0.0, 1.0]


def test_nothing_to_score_summarises_to_no_scores():
    overall = summarize([], PASSAGES)["overall"]
    assert overall["n"] == 0 and overall["em"] is None and overall["searches_per_question"] == 0.0


# --- question selection and paired comparisons ---------------------------------------------

QUESTIONS = [Question(f"{d}{i}", "?", ["a"], d) for d in ("hotpotqa", "2wiki") for i in range(3)]


def answered(qid: str, prediction: str, method: str = "agent") -> Trajectory:
    return Trajectory(
        qid=qid, prediction=prediction, answers=["red car"], method=method, messages=[]
    )


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


def test_support_recall_is_compared_on_the_questions_both_sides_measured():
    def found(qid, recall):
        return dataclasses.replace(answered(qid, "x"), support_recall=recall)

    searcher = [found("q1", 1.0), found("q2", 0.5), found("q3", None)]
    reader = [found("q1", 0.5), found("q2", 0.5), found("q3", 1.0)]
    got = compare_records(searcher, reader)["support_recall"]
    assert got.n == 2 and got.diff == pytest.approx(25.0)  # q3 has no recall on one side
    assert "support_recall" not in compare_records([answered("q1", "x")], [answered("q1", "y")])


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
    assert got["iter_2"]["vs_prev"]["em"] == {
        "diff": 0.0,
        "lo": 0.0,
        "hi": 0.0,
        "n": 1,
        "method": "point",  # one question: nothing to resample
        "n_boot": 0,
    }
    table = comparisons_markdown(got)
    assert "| iter_1 | iter_0 | 1 | +100.0 [+100.0, +100.0] |" in table


# --- the metrics document the evaluate stage writes -------------------------------------------


class ReplayAgent:
    """Stands in for `SearchAgent`: each method's records, as if just generated."""

    def __init__(self, by_method):
        self.by_method = by_method
        self.seen_passages = dict(PASSAGES)
        self.decodings = []

    def run(self, questions, *, method, decoding):
        self.decodings.append(decoding)
        return self.by_method[method]


def test_the_first_method_heads_the_document_and_is_compared_with_each_other_one():
    by_method = {
        "agent": [record(qid="q1", steps=[["p1"]]), record(qid="q2", prediction="x")],
        "rag": [record(qid="q1", prediction="x", method="rag"), record(qid="q2", method="rag")],
        "direct": [record(qid="q2", method="direct")],
    }
    agent = ReplayAgent(by_method)
    records, doc = evaluate_methods(
        QUESTIONS, agent, ["agent", "rag", "direct"], Decoding(temperature=0.0, seed=3)
    )
    plain = [dataclasses.replace(r, support_recall=None) for r in records]
    assert plain == [*by_method["agent"], *by_method["rag"], *by_method["direct"]]
    # each record carries its own support recall; direct never retrieves, so it has none
    assert [r.support_recall for r in records] == [1.0, 0.0, 0.0, 0.0, None]
    assert {(d.temperature, d.seed) for d in agent.decodings} == {(0.0, 3)}
    assert list(doc) == [
        "primary",
        "overall",
        "by_dataset",
        "comparisons",
        "seconds",
        "methods",
        "behaviour",
    ]
    assert doc["primary"] == "agent" and doc["overall"]["em"] == 50.0
    assert list(doc["comparisons"]) == ["agent_vs_rag", "agent_vs_direct"]
    assert doc["comparisons"]["agent_vs_direct"]["em"] == {
        "diff": -100.0,
        "lo": -100.0,
        "hi": -100.0,
        "n": 1,
        "method": "point",
        "n_boot": 0,
    }
    assert all("per_sample" not in m for m in doc["methods"].values())
    assert set(doc["seconds"]) == {"agent", "rag", "direct"}


def test_metrics_markdown_tabulates_every_method_then_the_comparisons():
    by_method = {"agent": [record(steps=[["p1"]])], "direct": [record(method="direct")]}
    summaries = {m: summarize(recs, PASSAGES) for m, recs in by_method.items()}
    doc = metrics_document(summaries, by_method, {"agent": 1.0, "direct": 0.5})
    assert metrics_markdown(doc) == (
        "| method | dataset | n | em | f1 | acc | recall | precision | support_recall"
        " | searches_per_question |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        "| agent | all | 1 | 100 | 100 | 100 | 100 | 100 | 100 | 1 |\n"
        "| agent | toy | 1 | 100 | 100 | 100 | 100 | 100 | 100 | 1 |\n"
        "| direct | all | 1 | 100 | 100 | 100 | – | – | – | 0 |\n"
        "| direct | toy | 1 | 100 | 100 | 100 | – | – | – | 0 |\n"
        "\n"
        "| comparison | n | ΔF1 [95% CI] | ΔEM [95% CI] | Δsupport recall [95% CI] |\n"
        "|---|---|---|---|---|\n"
        # direct never retrieves: no support recall to compare
        "| agent_vs_direct | 1 | +0.0 [+0.0, +0.0] | +0.0 [+0.0, +0.0] | – |\n"
    )


def test_a_document_needs_a_method():
    with pytest.raises(ValueError, match="evaluate.methods"):
        metrics_document({}, {}, {})
