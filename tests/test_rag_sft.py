"""The rag_sft baseline: a one-shot RAG reader trained on the chain's questions for as many steps."""

from __future__ import annotations

import json

import pytest

from exsearch import prompts
from exsearch.agent import questions_trained_on, rag_sft_examples
from exsearch.agent.loop import SearchAgent
from exsearch.config.params import AgentConfig, IndexConfig
from exsearch.data import write_questions, write_trajectories
from exsearch.evaluation import relabel
from exsearch.report.campaign import checkpoint_comparisons, checkpoint_predictions
from exsearch.retrieval import BM25Retriever, build_index
from exsearch.schema import Question, Trajectory
from tests.test_agent import CORPUS, QUESTION, ScriptedGenerator

OTHER = Question(
    id="q2", question="What is the capital of France?", answers=["Paris"], dataset="hotpotqa"
)


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever.build(CORPUS, IndexConfig())


def test_an_example_is_the_prompt_rag_is_evaluated_with_and_the_gold_answer(retriever):
    cfg = AgentConfig(top_k=3, passage_max_words=20)
    gen = ScriptedGenerator(lambda prompt: "Chief of Protocol</answer>")
    (evaluated,) = SearchAgent(gen, retriever, cfg).run([QUESTION], method="rag", progress=False)
    (example,) = rag_sft_examples([QUESTION], retriever, cfg)
    assert example["messages"][:2] == evaluated.messages[:2]
    assert example["messages"][2] == {
        "role": "assistant",
        "content": prompts.answer_turn("Chief of Protocol"),
    }
    assert example["weight"] == 1.0


def test_the_passages_are_the_questions_own_top_k(retriever):
    for k in (1, 2):
        cfg = AgentConfig(top_k=k, passage_max_words=50)
        (example,) = rag_sft_examples([QUESTION], retriever, cfg)
        user = example["messages"][1]["content"]
        assert f"[{k}] Title:" in user and f"[{k + 1}] Title:" not in user
    (paris,) = rag_sft_examples([OTHER], retriever, AgentConfig(top_k=2))
    assert "[1] Title: Paris Content:" in paris["messages"][1]["content"]


def test_a_question_sampled_k_times_is_trained_on_once_in_first_seen_order():
    def sampled(q: Question, j: int) -> Trajectory:
        return Trajectory.of_question(q, sample=j, messages=[])

    trained = [sampled(OTHER, 0), sampled(QUESTION, 0), sampled(OTHER, 1), sampled(QUESTION, 1)]
    assert [q.id for q in questions_trained_on(trained, [QUESTION, OTHER])] == ["q2", "q1"]
    with pytest.raises(ValueError, match="'q2' of the trajectories is not in the training pool"):
        questions_trained_on(trained, [QUESTION])


def test_relabelled_results_name_the_baseline_everywhere():
    record = Trajectory.of_question(QUESTION, method="rag", messages=[])
    doc = {"primary": "rag", "seconds": {"rag": 1.0}, "methods": {"rag": {"n": 1}}, "overall": {}}
    records, renamed = relabel([record], doc, "rag", "rag_sft")
    assert [r.method for r in records] == ["rag_sft"]
    assert renamed["primary"] == "rag_sft" and set(renamed["methods"]) == {"rag_sft"}
    assert record.method == "rag"  # the input is left as it was
    with pytest.raises(ValueError, match="one method"):
        relabel([record], {**doc, "methods": {"rag": {}, "agent": {}}}, "rag", "rag_sft")


def test_the_report_compares_the_agent_with_rag_sft_read_from_its_own_folder(tmp_path):
    def record(q: Question, method: str, prediction: str) -> Trajectory:
        return Trajectory.of_question(q, method=method, messages=[], prediction=prediction)

    questions = [QUESTION, OTHER]
    write_trajectories(
        tmp_path / "iter_1" / "predictions.jsonl",
        [record(q, "agent", q.answers[0]) for q in questions]
        + [record(q, "rag", "") for q in questions],
    )
    write_trajectories(
        tmp_path / "rag_sft" / "iter_1" / "predictions.jsonl",
        [record(q, "rag_sft", "Paris") for q in questions],
    )
    predictions = {"iter_1": checkpoint_predictions(tmp_path, "iter_1")}
    assert sorted({r.method for r in predictions["iter_1"]}) == ["agent", "rag", "rag_sft"]
    got = checkpoint_comparisons(predictions, previous={})["iter_1"]
    assert set(got) == {"agent_vs_rag", "agent_vs_rag_sft"}  # iter_rag was not scored
    assert got["agent_vs_rag_sft"]["f1"]["n"] == 2
    assert got["agent_vs_rag_sft"]["f1"]["diff"] == pytest.approx(50.0)  # right on q1 only


@pytest.mark.slow
def test_the_stage_trains_exactly_the_matched_stages_steps(tmp_path, tiny_model_dir, monkeypatch):
    from stages import rag_sft

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXSEARCH_TRACKING", "off")
    (tmp_path / "params.yaml").write_text(
        "prepare: {train: [], dev: []}\nagent: {top_k: 2, passage_max_words: 20}\n"
        "train: {lora: true, lora_r: 4, batch_size: 1, grad_accum: 1, max_length: 512}\n"
    )
    build_index(CORPUS, IndexConfig(), tmp_path / "index")
    write_questions(tmp_path / "train.jsonl", [QUESTION, OTHER])
    write_trajectories(
        tmp_path / "trajectories.jsonl",
        [
            Trajectory.of_question(q, sample=j, messages=[])
            for q in (QUESTION, OTHER)
            for j in (0, 1)
        ],
    )
    (tmp_path / "train_stats.json").write_text(json.dumps({"steps": 3}))
    common = ["--questions", "train.jsonl", "--index", "index", "--trained-on"]
    rag_sft.main(
        [
            "--iteration", "iter_1", "--model", str(tiny_model_dir), *common,
            "trajectories.jsonl", "--steps-of", "train_stats.json", "--out", "out",
            "--stats", "stats.json",
        ]
    )  # fmt: skip
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["steps"] == stats["matched_steps"] == 3
    assert stats["questions"] == 2
    assert (tmp_path / "out" / "config.json").is_file()
