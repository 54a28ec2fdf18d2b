"""`exsearch export --format flashrag`: predictions in FlashRAG's dataset schema, scored alike.

FlashRAG's schema (github.com/RUC-NLPIR/FlashRAG, flashrag/dataset/dataset.py): an item is
{id, question, golden_answers, output: {pred, retrieval_result, prompt, …}, metadata}.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

from exsearch.data import write_trajectories
from exsearch.evaluation import export_flashrag, to_flashrag
from exsearch.files import read_json, read_jsonl, write_jsonl
from exsearch.metrics import qa_scores
from exsearch.schema import Passage, Step, Trajectory
from flows import cli

PASSAGES = [
    Passage(id="p1", title="Paris", text="Paris is the capital of France."),
    Passage(id="p2", title="France", text="France is a country in Europe."),
    Passage(id="p3", title="", text="A passage without a title."),
    Passage(id="p9", title="Unused", text="Never retrieved."),
]


def record(qid: str, prediction: str, answers: list[str], **fields) -> Trajectory:
    return Trajectory(
        qid=qid,
        method=fields.pop("method", "agent"),
        dataset=fields.pop("dataset", "hotpotqa"),
        question=fields.pop("question", f"question {qid}?"),
        answers=answers,
        messages=fields.pop("messages", [{"role": "user", "content": f"question {qid}?"}]),
        prediction=prediction,
        finish_reason="final",
        **fields,
    )


def two_searches() -> Trajectory:
    """Two searches whose results overlap: p2 comes back twice."""
    return record(
        "q1",
        "Paris",
        ["Paris", "City of Light"],
        question="What is the capital of France?",
        steps=[
            Step(query="capital of France", passage_ids=["p1", "p2"]),
            Step(query="France capital city", passage_ids=["p2", "p3"]),
        ],
        messages=[
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "<answer>Paris</answer>"},
        ],
        supporting_titles=["Paris"],
    )


@pytest.fixture
def files(tmp_path):
    """A predictions file with an agent and a rag record, and the corpus they searched."""
    predictions, corpus = tmp_path / "predictions.jsonl", tmp_path / "corpus.jsonl"
    rag = record("q1", "France", ["Paris"], method="rag", steps=[Step("q", ["p9"])])
    write_trajectories(predictions, [two_searches(), rag])
    write_jsonl(corpus, (p.to_dict() for p in PASSAGES))
    return predictions, corpus


# --------------------------------------------------------------------------- the schema
def test_an_item_carries_flashrags_field_names_and_our_values():
    item = to_flashrag(two_searches()).to_dict()
    assert list(item) == ["id", "question", "golden_answers", "output", "metadata"]
    assert item["id"] == "q1"
    assert item["question"] == "What is the capital of France?"
    assert item["golden_answers"] == ["Paris", "City of Light"]
    assert item["output"]["pred"] == "Paris"
    assert item["output"]["prompt"] == two_searches().messages
    assert item["metadata"] == {
        "dataset": "hotpotqa",
        "method": "agent",
        "finish_reason": "final",
        "searches": ["capital of France", "France capital city"],
        "supporting_titles": ["Paris"],
    }


def test_the_retrieval_result_is_one_list_in_order_without_repeats():
    item = to_flashrag(two_searches())
    assert [d["id"] for d in item.output["retrieval_result"]] == ["p1", "p2", "p3"]


def test_without_a_corpus_the_retrieval_result_holds_ids_only():
    assert to_flashrag(two_searches()).output["retrieval_result"][0] == {"id": "p1"}


def test_with_a_corpus_a_passage_is_flashrags_title_newline_text():
    item = to_flashrag(two_searches(), {p.id: p for p in PASSAGES})
    assert item.output["retrieval_result"] == [
        {"id": "p1", "contents": "Paris\nParis is the capital of France."},
        {"id": "p2", "contents": "France\nFrance is a country in Europe."},
        {"id": "p3", "contents": "\nA passage without a title."},
    ]


def test_a_question_that_never_searched_has_an_empty_retrieval_result():
    item = to_flashrag(record("q2", "no idea", ["x"]))
    assert item.output["retrieval_result"] == []
    assert item.metadata["searches"] == []


# --------------------------------------------------------------------------- the file
def test_jsonl_output_is_what_flashrags_dataset_loads_one_item_a_line(files, tmp_path):
    predictions, corpus = files
    out = tmp_path / "out" / "agent.jsonl"
    assert export_flashrag(predictions, out, corpus=corpus) == 1
    (item,) = read_jsonl(out)
    assert item["output"]["retrieval_result"][1]["contents"].startswith("France\n")


def test_json_output_is_one_list_as_flashrags_dataset_save_writes(files, tmp_path):
    predictions, _ = files
    out = tmp_path / "rag.json"
    export_flashrag(predictions, out, method="rag")
    items = read_json(out)
    assert isinstance(items, list)
    assert [(i["id"], i["output"]["pred"]) for i in items] == [("q1", "France")]


def test_only_the_chosen_method_is_exported(files, tmp_path):
    predictions, _ = files
    export_flashrag(predictions, tmp_path / "agent.jsonl")
    assert [i["metadata"]["method"] for i in read_jsonl(tmp_path / "agent.jsonl")] == ["agent"]


def test_a_method_not_in_the_file_is_refused_naming_those_that_are(files, tmp_path):
    predictions, _ = files
    with pytest.raises(ValueError, match=r"no 'direct' records; the file holds agent, rag"):
        export_flashrag(predictions, tmp_path / "out.jsonl", method="direct")
    assert not (tmp_path / "out.jsonl").exists()


def test_a_retrieved_id_missing_from_the_corpus_is_refused(files, tmp_path):
    predictions, corpus = files
    write_jsonl(corpus, [PASSAGES[0].to_dict()])
    with pytest.raises(
        ValueError, match=r"2 retrieved passage id\(s\) not in the corpus, e.g. 'p2'"
    ):
        export_flashrag(predictions, tmp_path / "out.jsonl", corpus=corpus)


@pytest.mark.parametrize("name", ["out.txt", "out"])
def test_an_output_flashrag_cannot_read_is_refused_before_any_work(tmp_path, name):
    with pytest.raises(ValueError, match=r"name the output \.jsonl"):
        export_flashrag(tmp_path / "missing.jsonl", tmp_path / name)


# --------------------------------------------------------------------------- FlashRAG's metrics
# FlashRAG's definitions (flashrag/evaluator/utils.py normalize_answer, metrics.py ExactMatch
# and F1_Score), written out here so the test holds the export to FlashRAG's scoring, not ours.
def flashrag_normalize(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def flashrag_em(pred: str, golds: list[str]) -> float:
    return float(any(flashrag_normalize(g) == flashrag_normalize(pred) for g in golds))


def flashrag_f1(pred: str, golds: list[str]) -> float:
    best = 0.0
    p = flashrag_normalize(pred)
    for gold in golds:
        g = flashrag_normalize(gold)
        if (p in ("yes", "no", "noanswer") or g in ("yes", "no", "noanswer")) and p != g:
            continue
        same = sum((Counter(p.split()) & Counter(g.split())).values())
        if same == 0:
            continue
        precision, recall = same / len(p.split()), same / len(g.split())
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


VARIED = [  # (prediction, gold answers): articles, punctuation, case, aliases, partial overlap
    ("The Eiffel Tower", ["Eiffel Tower"]),
    ("an apple", ["Apple Inc.", "apple"]),
    ("U.S.A.", ["USA", "United States"]),
    ("barack obama", ["Barack Obama"]),
    ("President Barack Obama", ["Barack Obama"]),
    ("yes", ["no"]),
    ("Yes.", ["yes"]),
    ("1,000", ["1000"]),
    ("New York City", ["New York", "NYC"]),
    ("", ["Paris"]),
    ("the the the", ["Thebes"]),
    ("J. R. R. Tolkien", ["John Ronald Reuel Tolkien", "J.R.R. Tolkien"]),
]


def test_flashrag_normalised_em_and_f1_of_the_export_match_ours_to_a_tenth(tmp_path):
    records = [record(f"q{i}", p, golds) for i, (p, golds) in enumerate(VARIED)]
    predictions = tmp_path / "predictions.jsonl"
    write_trajectories(predictions, records)
    export_flashrag(predictions, tmp_path / "out.jsonl")
    items = list(read_jsonl(tmp_path / "out.jsonl"))
    theirs_em = 100 * sum(flashrag_em(i["output"]["pred"], i["golden_answers"]) for i in items)
    theirs_f1 = 100 * sum(flashrag_f1(i["output"]["pred"], i["golden_answers"]) for i in items)
    ours = qa_scores([r.prediction for r in records], [r.answers for r in records])
    # The project reports percentages (summary: 100 × the mean of exsearch.metrics' scores).
    assert theirs_em / len(items) == pytest.approx(100 * ours["em"].value, abs=0.1)
    assert theirs_f1 / len(items) == pytest.approx(100 * ours["f1"].value, abs=0.1)


# --------------------------------------------------------------------------- the command line
@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_exsearch_export_writes_the_file(project, files, capsys):
    predictions, corpus = files
    argv = ["export", "--format", "flashrag", "--predictions", str(predictions)]
    assert cli.main([*argv, "--corpus", str(corpus), "--out", "reports/agent.jsonl"]) == 0
    (item,) = read_jsonl(project / "reports" / "agent.jsonl")
    assert item["output"]["pred"] == "Paris"
    assert "wrote 1 agent item" in capsys.readouterr().out


def test_exsearch_export_of_an_unknown_method_fails_with_one_clear_line(project, files, capsys):
    predictions, _ = files
    argv = ["export", "--format", "flashrag", "--predictions", str(predictions), "--out", "x.json"]
    assert cli.main([*argv, "--method", "direct"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("exsearch export: error: ValueError: ")
    assert "no 'direct' records; the file holds agent, rag" in err
    assert err.count("\n") == 1
    assert not (project / "x.json").exists()


def test_exsearch_export_of_a_missing_file_says_what_writes_it(project, capsys):
    argv = ["export", "--format", "flashrag", "--predictions", "runs/iter_9/predictions.jsonl"]
    assert cli.main([*argv, "--out", "x.jsonl"]) == 1
    assert "evaluate stage writes runs/<checkpoint>/predictions.jsonl" in capsys.readouterr().err
