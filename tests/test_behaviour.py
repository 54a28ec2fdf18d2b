"""Search behaviour per hop count and question kind (exsearch.evaluation.behaviour)."""

from __future__ import annotations

from exsearch.evaluation.behaviour import (
    hop_count,
    later_searches,
    question_kind,
    search_behaviour,
)
from exsearch.schema import Passage, Question, Step, TokenCounts, Trajectory

PASSAGES = {
    p.id: p
    for p in (
        Passage("a", "Alpha", "..."),
        Passage("b", "Beta", "..."),
        Passage("c", "Gamma", "..."),
        Passage("x", "Noise", "..."),
    )
}


def question(qid, dataset="musique", kind="3hop2", support=("Alpha", "Beta", "Gamma")):
    hops = [{"title": t} for t in support]
    return Question(qid, "?", ["ans"], dataset, list(support), {"type": kind, "support": hops})


def searched(qid, *steps, prediction="ans", titles=("Alpha", "Beta", "Gamma")):
    return Trajectory(
        qid=qid,
        method="agent",
        prediction=prediction,
        answers=["ans"],
        supporting_titles=list(titles),
        messages=[],
        steps=[Step(f"query {i}", list(ids)) for i, ids in enumerate(steps)],
        tokens=TokenCounts(generated=5, last_prompt=50),
    )


def test_question_kinds_name_the_dataset_and_its_type_with_musique_hops_merged():
    assert question_kind(question("q", "musique", "3hop2")) == "musique 3hop"
    assert question_kind(question("q", "hotpotqa", "bridge")) == "hotpotqa bridge"
    assert question_kind(Question("q", "?", ["a"], "nq")) == "nq"
    assert hop_count(question("q")) == 3
    assert hop_count(Question("q", "?", ["a"], "nq", ["T1", "T2"])) == 2


def test_a_later_search_counts_when_it_shows_a_supporting_passage_not_seen_before():
    # first search finds Alpha; the second finds Alpha again (nothing new), the third Beta (new)
    rec = searched("q", ["a", "x"], ["a"], ["x", "b"])
    assert later_searches(rec, PASSAGES) == (2, 1)
    assert later_searches(searched("q", ["a"]), PASSAGES) == (0, 0)  # one search: none later


def test_behaviour_groups_by_hops_and_kind():
    questions = [
        question("m3"),
        question("h2", "hotpotqa", "bridge", ("Alpha", "Beta")),
        question("h2b", "hotpotqa", "comparison", ("Alpha", "Gamma")),
    ]
    records = [
        searched("m3", ["a"], ["b"], ["c"]),  # three searches, each brings a new hop
        searched("h2", ["a", "b"], titles=("Alpha", "Beta")),  # one search finds both
        searched("h2b", ["x"], prediction="no", titles=("Alpha", "Gamma")),
        searched("unknown", ["a"]),  # not among the questions: left out
    ]
    got = search_behaviour(records, PASSAGES, questions)
    assert list(got["by_hops"]) == ["2", "3"]
    assert got["by_hops"]["3"] == {
        "n": 1,
        "f1": 100.0,
        "support_recall": 100.0,
        "searches_per_question": 3.0,
        "later_searches": 2,
        "new_support_share": 1.0,
    }
    two = got["by_hops"]["2"]
    assert (two["n"], two["f1"], two["support_recall"]) == (2, 50.0, 50.0)
    assert two["later_searches"] == 0 and two["new_support_share"] is None
    assert set(got["by_type"]) == {"hotpotqa bridge", "hotpotqa comparison", "musique 3hop"}


def test_no_records_no_groups():
    assert search_behaviour([], PASSAGES, [question("q")]) == {"by_type": {}, "by_hops": {}}
