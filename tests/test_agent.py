"""The agent loop: finish reasons, forced answers, context budget, batching and seeding."""

from __future__ import annotations

import json

import pytest

from exsearch import prompts
from exsearch.agent.loop import Decoding, SearchAgent
from exsearch.config.params import AgentConfig, IndexConfig
from exsearch.generation import Completion
from exsearch.generation.decoding import cut_at_stop
from exsearch.retrieval import BM25Retriever
from exsearch.schema import Passage, Question, Trajectory

CORPUS = [
    Passage(
        "p0",
        "Kiss and Tell (1945 film)",
        "Kiss and Tell is a 1945 comedy starring Shirley Temple as Corliss Archer.",
    ),
    Passage(
        "p1",
        "Shirley Temple",
        "Shirley Temple Black was an actress who later served as Chief of Protocol of the United States.",
    ),
    Passage(
        "p2",
        "Meet Corliss Archer",
        "Meet Corliss Archer was a radio sitcom from the Golden Age of radio.",
    ),
    Passage("p3", "Paris", "Paris is the capital and most populous city of France."),
    *[Passage(f"f{i}", f"Filler {i}", " ".join(["filler word text"] * 60)) for i in range(8)],
]

QUESTION = Question(
    id="q1",
    question="What government position was held by the woman who portrayed Corliss Archer in Kiss and Tell?",
    answers=["Chief of Protocol"],
    dataset="hotpotqa",
    supporting_titles=["Kiss and Tell (1945 film)", "Shirley Temple"],
)


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever.build(CORPUS, IndexConfig())


class ScriptedGenerator:
    """A stand-in for a model: `policy(prompt) -> text`, one whitespace token per word."""

    def __init__(self, policy):
        self.policy = policy
        self.calls: list[list[str]] = []

    def chat_prompt(self, messages, *, add_generation_prompt=True):
        body = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return body + ("<|assistant|>" if add_generation_prompt else "")

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    def generate(self, prompts_, *, max_new_tokens, stop, temperature, top_p, seed):
        self.calls.append(list(prompts_))
        out = []
        for p in prompts_:
            words = self.policy(p).split(" ")
            text = " ".join(words[:max_new_tokens])
            cut, hit = cut_at_stop(text, stop)
            finish = "stop" if hit else ("length" if len(words) > max_new_tokens else "stop")
            out.append(Completion(cut, min(len(words), max_new_tokens), -1.0, finish, hit))
        return out


def expert(prompt: str) -> str:
    """Searches for the film, then the actress, then finishes and answers."""
    if prompt.endswith(prompts.ANSWER_OPEN):
        return "Chief of Protocol</answer>"
    n_docs = prompt.count(prompts.DOCS_OPEN)
    if n_docs == 0:
        return "need the film</think><search>Kiss and Tell 1945 film</search>"
    if n_docs == 1:
        return "Shirley Temple played Corliss Archer</record><think>her position</think><search>Shirley Temple position</search>"
    return "Chief of Protocol</record><think>enough</think><finish>"


def run(policy, cfg=None, retriever=None, **kw):
    cfg = cfg or AgentConfig(max_steps=3, max_new_tokens=40, max_context_tokens=600)
    gen = ScriptedGenerator(policy)
    agent = SearchAgent(gen, retriever, cfg)
    return agent.run([QUESTION], progress=False, **kw)[0], gen


def test_a_good_trajectory_searches_records_and_answers(retriever):
    rec, _ = run(expert, retriever=retriever)
    assert rec.finish_reason == "final"
    assert rec.prediction == "Chief of Protocol"
    assert [s.query for s in rec.steps] == [
        "Kiss and Tell 1945 film",
        "Shirley Temple position",
    ]
    assert [s.record for s in rec.steps] == [
        "Shirley Temple played Corliss Archer",
        "Chief of Protocol",
    ]
    assert rec.steps[0].passage_ids[0] == "p0"
    assert rec.messages[-1] == {
        "role": "assistant",
        "content": "<answer>Chief of Protocol</answer>",
    }
    # The chat parses back into the same steps.
    steps, answer = prompts.parse_steps(rec.messages)
    assert [s.query for s in steps] == [
        s.query for s in rec.steps
    ] and answer == "Chief of Protocol"


def test_a_record_is_written_with_the_keys_and_key_order_it_has_always_had(retriever):
    rec, _ = run(expert, retriever=retriever, decoding=Decoding(temperature=0.5, seed=4))
    line = rec.to_dict()
    assert list(line) == [
        "qid",
        "sample",
        "seed",
        "temperature",
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
        "tokens",
        "logprob",
    ]
    assert [list(s) for s in line["steps"]] == [["query", "passage_ids", "record", "think"]] * 2
    assert (line["seed"], line["temperature"], line["n_searches"]) == (4, 0.5, 2)
    assert list(line["tokens"]) == ["generated", "last_prompt"]
    assert Trajectory.from_dict(json.loads(json.dumps(line))) == rec


def test_a_model_that_never_finishes_stops_at_max_steps_with_a_forced_answer(retriever):
    counter = iter(range(1000))

    def searcher(p):
        if p.endswith(prompts.ANSWER_OPEN):
            return "Paris</answer>"
        return f"x</record><think>more</think><search>query number {next(counter)}</search>"

    rec, _ = run(searcher, retriever=retriever)
    assert rec.finish_reason == "max_steps"
    assert len(rec.steps) == 3
    assert rec.prediction == "Paris"


def test_garbage_is_malformed_and_still_answered(retriever):
    rec, _ = run(
        lambda p: "Paris</answer>" if p.endswith("<answer>") else "blah blah", retriever=retriever
    )
    assert rec.finish_reason == "malformed"
    assert rec.prediction == "Paris"


def test_a_tag_never_closed_ends_with_length_and_a_forced_answer(retriever):
    rec, _ = run(
        lambda p: "" if p.endswith("<answer>") else "<search>" + "word " * 200, retriever=retriever
    )
    assert rec.finish_reason == "length"
    assert rec.prediction == ""
    assert rec.messages[-1]["content"] == "<answer></answer>"


def test_repeated_queries_get_a_notice_and_count_as_steps(retriever):
    rec, _ = run(
        lambda p: "x</answer>" if p.endswith("<answer>") else "t</think><search>Paris</search>",
        retriever=retriever,
    )
    notices = [m for m in rec.messages if m["content"] == prompts.REPEATED_QUERY_NOTICE]
    assert rec.finish_reason == "max_steps" and len(notices) == 2


def test_passages_never_exceed_the_context_budget(retriever):
    cfg = AgentConfig(max_steps=6, max_new_tokens=20, max_context_tokens=300, passage_max_words=80)
    seen = []

    def policy(p):
        seen.append(len(p.split()))
        if p.endswith(prompts.ANSWER_OPEN):
            return "x</answer>"
        return f"r</record><think>t</think><search>filler word text {len(seen)}</search>"

    rec, _ = run(policy, cfg=cfg, retriever=retriever)
    budget_act = cfg.max_context_tokens - cfg.max_new_tokens
    assert max(seen) <= budget_act
    assert QUESTION.question in rec.messages[1]["content"]  # the question is never cut
    assert rec.finish_reason in {"length", "max_steps"}


def test_one_generation_call_per_round_over_all_live_trajectories(retriever):
    gen = ScriptedGenerator(expert)
    agent = SearchAgent(gen, retriever, AgentConfig(max_steps=3, max_context_tokens=2048))
    recs = agent.run([QUESTION] * 5, samples=2, progress=False)
    assert len(recs) == 10 and all(r.finish_reason == "final" for r in recs)
    assert [len(c) for c in gen.calls] == [10, 10, 10, 10]  # search, search, finish, answer
    assert sorted({r.sample for r in recs}) == [0, 1]


def test_the_agent_remembers_every_passage_it_showed(retriever):
    agent = SearchAgent(
        ScriptedGenerator(expert), retriever, AgentConfig(max_steps=3, max_new_tokens=40)
    )
    rec = agent.run([QUESTION], progress=False)[0]
    shown = {pid for step in rec.steps for pid in step.passage_ids}
    assert shown and set(agent.seen_passages) == shown
    assert all(agent.seen_passages[pid] in CORPUS for pid in shown)


def test_baselines_run_in_the_same_harness(retriever):
    direct, gen = run(lambda p: "Paris</answer>", method="direct")
    assert direct.steps == [] and direct.prediction == "Paris"
    assert prompts.DOCS_OPEN not in gen.calls[0][0]
    rag, gen = run(lambda p: "Chief of Protocol</answer>", method="rag", retriever=retriever)
    assert len(rag.steps) == 1 and rag.steps[0].query == QUESTION.question
    assert prompts.DOCS_OPEN in gen.calls[0][0] and len(gen.calls) == 1


def test_real_model_never_hangs_and_always_answers(tiny_model_dir, retriever):
    from exsearch.config.params import GenerationConfig, ModelConfig
    from exsearch.generation.hf import HFGenerator

    gen = HFGenerator.from_config(tiny_model_dir, ModelConfig(), GenerationConfig(batch_size=4))
    cfg = AgentConfig(
        max_steps=2, max_new_tokens=16, answer_max_new_tokens=8, max_context_tokens=512
    )
    agent = SearchAgent(gen, retriever, cfg)
    recs = agent.run(
        [QUESTION] * 3, samples=2, decoding=Decoding(temperature=1.0, seed=7), progress=False
    )
    assert len(recs) == 6
    assert all(r.finish_reason in {"final", "max_steps", "malformed", "length"} for r in recs)
    assert all(r.messages[-1]["content"].startswith(prompts.ANSWER_OPEN) for r in recs)
    again = agent.run(
        [QUESTION] * 3, samples=2, decoding=Decoding(temperature=1.0, seed=7), progress=False
    )
    assert [r.messages for r in again] == [r.messages for r in recs]  # seeded: reproducible


def follow_up_reader(prompt: str) -> str:
    """iter_rag's model: asks for the actress after reading the question's passages."""
    if prompt.endswith(prompts.ANSWER_OPEN):
        return "Chief of Protocol</answer>"
    return "Shirley Temple position</search>"


def test_iter_rag_reads_writes_one_follow_up_query_reads_again_and_answers(retriever):
    rec, gen = run(follow_up_reader, method="iter_rag", retriever=retriever)
    assert rec.method == "iter_rag" and rec.finish_reason == "final"
    assert [s.query for s in rec.steps] == [QUESTION.question, "Shirley Temple position"]
    assert all(s.passage_ids for s in rec.steps)
    roles = [m["role"] for m in rec.messages]
    assert roles == ["system", "user", "assistant", "user", "user", "assistant"]
    assert rec.messages[1]["content"].endswith(prompts.FOLLOW_UP_REQUEST)
    assert rec.messages[2]["content"] == "<search>Shirley Temple position</search>"
    assert rec.messages[3]["content"].startswith(prompts.DOCS_OPEN)
    assert rec.prediction == "Chief of Protocol"
    # the query turn is prefilled with the search tag, the answer turn with the answer tag
    assert gen.calls[0][0].endswith(prompts.SEARCH_OPEN)
    assert gen.calls[1][0].endswith(prompts.ANSWER_OPEN)


def test_iter_rag_without_a_query_answers_from_what_it_read_and_says_so(retriever):
    def no_query(prompt):
        return "Chief of Protocol</answer>" if prompt.endswith(prompts.ANSWER_OPEN) else "hmm"

    rec, _ = run(no_query, method="iter_rag", retriever=retriever)
    assert rec.finish_reason == "malformed" and len(rec.steps) == 1
    assert rec.prediction == "Chief of Protocol"


def test_the_oracle_reads_the_gold_supporting_paragraphs_without_a_retriever():
    from dataclasses import replace

    from exsearch.agent.loop import ORACLE_QUERY
    from exsearch.data import passage_id

    support = [
        {"title": p.title, "paragraph": p.text} for p in CORPUS[:2] for _ in range(2)
    ]  # each hop twice: shown once
    q = replace(QUESTION, extra={"support": support})
    gen = ScriptedGenerator(lambda p: "Chief of Protocol</answer>")
    agent = SearchAgent(gen, None, AgentConfig(max_context_tokens=600))
    (rec,) = agent.run([q], method="oracle", progress=False)
    assert rec.steps[0].query == ORACLE_QUERY
    assert rec.steps[0].passage_ids == [passage_id(p.title, p.text) for p in CORPUS[:2]]
    assert "Shirley Temple Black was an actress" in rec.messages[1]["content"]
    assert set(agent.seen_passages) == set(rec.steps[0].passage_ids)
    assert rec.finish_reason == "final" and rec.prediction == "Chief of Protocol"
