"""The document-selection action (ExSearch-Zoo): list candidates, select, show only the selected."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from test_agent import CORPUS, QUESTION, ScriptedGenerator
from transformers import AutoTokenizer

from exsearch import prompts
from exsearch.agent.loop import SearchAgent
from exsearch.agent.selection import Selection, parse_selection, selected
from exsearch.agent.warmup import WarmupShape, build_trajectories
from exsearch.config.params import AgentConfig, ConfigError, IndexConfig, parse_params
from exsearch.mstep.chat_encoding import IGNORE_INDEX, encode_conversation
from exsearch.retrieval import BM25Retriever, format_passage
from exsearch.schema import Passage, Trajectory

ROOT = Path(__file__).resolve().parents[1]
BY_ID = {p.id: p for p in CORPUS}
SELECTING = AgentConfig(
    top_k=3, select_from=6, max_steps=3, max_new_tokens=40, max_context_tokens=4096
)


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever.build(CORPUS, IndexConfig())


# --- parsing a selection turn ------------------------------------------------------------


def test_a_selection_names_candidates_in_the_models_order():
    assert parse_selection("<select>[2] > [1]</select>", 10, 5) == Selection((2, 1))


def test_a_candidate_named_twice_counts_once():
    assert parse_selection("<select>[3] > [1] > [3] > [1]</select>", 10, 5) == Selection((3, 1))


def test_numbers_outside_the_candidate_list_are_dropped():
    assert parse_selection("<select>[0] > [11] > [4] > [10]</select>", 10, 5) == Selection((4, 10))


def test_at_most_top_k_candidates_are_kept():
    text = "<select>[5] > [4] > [3] > [2] > [1]</select>"
    assert parse_selection(text, 10, 3) == Selection((5, 4, 3))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<select></select>",
        "<select>none of them help</select>",
        "<select>2 > 1</select>",  # numbers without brackets
        "<select>[42] > [0]</select>",  # only numbers outside the list
        "<select>[2] > [1]",  # never closed: cut by the token limit
        "[2] > [1]",  # no tags
    ],
)
def test_a_malformed_selection_falls_back_to_retrieval_order_and_says_so(text):
    assert parse_selection(text, 10, 3) == Selection((1, 2, 3), fallback=True)
    assert parse_selection(text, 2, 3) == Selection((1, 2), fallback=True)


def test_selection_numbers_are_one_based_as_shown_to_the_model():
    assert selected(["a", "b", "c"], Selection((3, 1))) == ["c", "a"]


def test_the_selection_turn_the_warm_up_writes_parses_back():
    assert prompts.select_turn([2, 1, 5]) == "<select>[2] > [1] > [5]</select>"
    assert parse_selection(prompts.select_turn([2, 1, 5]), 5, 5) == Selection((2, 1, 5))


# --- the agent with selection on ---------------------------------------------------------


class RecordingGenerator(ScriptedGenerator):
    """A scripted model that also keeps the stop strings each call was given."""

    def __init__(self, policy):
        super().__init__(policy)
        self.stops: list[list[str]] = []

    def generate(self, prompts_, *, stop, **kw):
        self.stops.append(list(stop))
        return super().generate(prompts_, stop=stop, **kw)


def selecting(choice: str):
    """Searches twice with queries many passages match, selects `choice`, records, answers."""

    def policy(prompt: str) -> str:
        if prompt.endswith(prompts.SELECT_OPEN):
            return choice
        if prompt.endswith(prompts.ANSWER_OPEN):
            return "Chief of Protocol</answer>"
        n_docs = prompt.count(prompts.DOCS_OPEN)
        if n_docs == 0:
            return "need the film</think><search>Corliss Archer in Kiss and Tell filler</search>"
        if n_docs == 1:
            return "Shirley Temple</record><think>her job</think><search>Shirley Temple filler</search>"
        return "Chief of Protocol</record><think>enough</think><finish>"

    return policy


def numbered(ids: list[str]) -> list[str]:
    """The passages `ids` as a listing shows them: numbered from 1, cut to 80 words."""
    return [format_passage(BY_ID[pid], i, max_words=80) for i, pid in enumerate(ids, 1)]


def run(policy, cfg, retriever, method="agent"):
    gen = RecordingGenerator(policy)
    agent = SearchAgent(gen, retriever, cfg)
    (rec,) = agent.run([QUESTION], method=method, progress=False)
    return rec, gen, agent


def test_the_agent_sees_only_the_passages_it_selected_in_its_order(retriever):
    rec, gen, agent = run(selecting("[2] > [1]</select>"), SELECTING, retriever)
    roles = [m["role"] for m in rec.messages]
    assert roles == ["system", "user"] + ["assistant", "user"] * 5 + ["assistant"]
    assert rec.messages[0]["content"] == prompts.select_system_prompt(3)
    first = rec.steps[0]
    assert len(first.candidate_ids) == 6 and not first.selection_fallback
    assert first.passage_ids == [first.candidate_ids[1], first.candidate_ids[0]]
    candidates, selection, documents = rec.messages[3:6]
    assert candidates["content"] == prompts.candidates_turn(numbered(first.candidate_ids))
    assert selection == {"role": "assistant", "content": "<select>[2] > [1]</select>"}
    assert documents["content"] == prompts.documents_turn(numbered(first.passage_ids))
    assert rec.messages[6]["content"].startswith(prompts.RECORD_OPEN)
    assert rec.finish_reason == "final" and rec.prediction == "Chief of Protocol"
    # only the selected passages count as seen
    assert set(agent.seen_passages) == {pid for s in rec.steps for pid in s.passage_ids}
    # the selection turn is prefilled with its tag and generation stops after it
    assert gen.calls[1][0].endswith(prompts.SELECT_OPEN)
    assert all(prompts.SELECT_CLOSE in stops for stops in gen.stops)


def test_a_record_with_selection_round_trips_and_still_parses_into_its_steps(retriever):
    rec, _, _ = run(selecting("[2] > [1]</select>"), SELECTING, retriever)
    line = json.loads(json.dumps(rec.to_dict()))
    assert list(line["steps"][0]) == [
        "query",
        "passage_ids",
        "record",
        "think",
        "candidate_ids",
        "selection_fallback",
    ]
    assert Trajectory.from_dict(line) == rec
    steps, answer = prompts.parse_steps(rec.messages)
    assert [s.query for s in steps] == [s.query for s in rec.steps]
    assert [s.record for s in steps] == [s.record for s in rec.steps]
    assert answer == "Chief of Protocol"


def test_a_malformed_selection_shows_the_retrieval_order_and_the_run_goes_on(retriever):
    rec, _, _ = run(selecting("the first ones</select>"), SELECTING, retriever)
    for step in rec.steps:
        assert step.selection_fallback
        assert step.passage_ids == step.candidate_ids[:3]
    assert rec.finish_reason == "final" and rec.prediction == "Chief of Protocol"


def test_without_selection_the_agent_runs_exactly_as_before(retriever):
    cfg = SELECTING.model_copy(update={"select_from": 0})
    rec, gen, _ = run(selecting("[2] > [1]</select>"), cfg, retriever)
    default = AgentConfig(max_steps=3, max_new_tokens=40, max_context_tokens=4096, top_k=3)
    before, before_gen, _ = run(selecting("[2] > [1]</select>"), default, retriever)
    assert rec == before and gen.calls == before_gen.calls
    assert gen.stops == [prompts.ACTION_STOPS + prompts.ANSWER_STOPS] * len(gen.calls)
    assert rec.messages[0]["content"] == prompts.SYSTEM_PROMPT
    seen = "".join(p for call in gen.calls for p in call)
    assert prompts.SELECT_OPEN not in seen and prompts.CANDIDATES_OPEN not in seen
    step_keys = [list(s) for s in rec.to_dict()["steps"]]
    assert step_keys == [["query", "passage_ids", "record", "think"]] * len(rec.steps)


@pytest.mark.parametrize("method", ["rag", "iter_rag"])
def test_the_baselines_never_select(retriever, method):
    def reader(prompt):
        return "Chief of Protocol</answer>" if prompt.endswith("<answer>") else "Shirley</search>"

    off = SELECTING.model_copy(update={"select_from": 0})
    with_select, gen, _ = run(reader, SELECTING, retriever, method=method)
    without, gen_off, _ = run(reader, off, retriever, method=method)
    assert with_select == without and gen.calls == gen_off.calls and gen.stops == gen_off.stops


class RealSelector:
    """The tiny real model writes the selection turns; the scripted policy writes the others."""

    def __init__(self, model, policy):
        self.model, self.scripted = model, ScriptedGenerator(policy)
        self.chat_prompt, self.count_tokens = model.chat_prompt, model.count_tokens

    def generate(self, prompts_, **kw):
        selecting = [p.endswith(prompts.SELECT_OPEN) for p in prompts_]
        mine = [p for p, s in zip(prompts_, selecting, strict=True) if s]
        by_model = iter(self.model.generate(mine, **kw) if mine else [])
        rest = [p for p, s in zip(prompts_, selecting, strict=True) if not s]
        by_script = iter(self.scripted.generate(rest, **kw))
        return [next(by_model) if s else next(by_script) for s in selecting]


def test_a_real_models_selection_never_shows_more_than_top_k_candidates(tiny_model_dir, retriever):
    from exsearch.agent.loop import Decoding
    from exsearch.config.params import GenerationConfig, ModelConfig
    from exsearch.generation.hf import HFGenerator

    model = HFGenerator.from_config(tiny_model_dir, ModelConfig(), GenerationConfig(batch_size=4))
    gen = RealSelector(model, selecting("unused"))
    cfg = SELECTING.model_copy(update={"top_k": 2, "select_from": 4, "max_new_tokens": 16})
    recs = SearchAgent(gen, retriever, cfg).run(
        [QUESTION] * 2, samples=2, decoding=Decoding(temperature=1.0, seed=3), progress=False
    )
    assert all(r.finish_reason == "final" and len(r.steps) == 2 for r in recs)
    for step in (s for r in recs for s in r.steps):
        assert len(step.candidate_ids) == 4 and len(step.passage_ids) in (1, 2)
        assert set(step.passage_ids) <= set(step.candidate_ids)
        if step.selection_fallback:
            assert step.passage_ids == step.candidate_ids[:2]


# --- training: the selection turn is the model's, so it carries loss ----------------------


def trained_runs(tok, enc) -> list[str]:
    """Each maximal run of trained (labelled) tokens, decoded."""
    runs: list[list[int]] = [[]]
    for i, lab in zip(enc["input_ids"], enc["labels"], strict=True):
        if lab != IGNORE_INDEX:
            runs[-1].append(i)
        elif runs[-1]:
            runs.append([])
    return [tok.decode(run) for run in runs if run]


def test_the_selection_turn_is_trained_and_the_candidates_are_not(tiny_model_dir, retriever):
    rec, _, _ = run(selecting("[2] > [1]</select>"), SELECTING, retriever)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = encode_conversation(tok, rec.messages, 8192)
    trained = trained_runs(tok, enc)
    assert trained.count("<select>[2] > [1]</select><|im_end|>") == 2  # one per search
    assert not any(prompts.CANDIDATES_OPEN in run for run in trained)


# --- config ------------------------------------------------------------------------------


def test_selecting_from_fewer_candidates_than_top_k_is_refused():
    with pytest.raises(ValidationError, match=r"select_from \(3\).*top_k \(5\)"):
        AgentConfig(top_k=5, select_from=3)
    assert AgentConfig(top_k=5, select_from=5).select_from == 5
    assert AgentConfig(top_k=5).select_from == 0  # off by default


def test_params_yaml_names_the_key_when_select_from_is_below_top_k():
    raw = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    raw["agent"] |= {"top_k": 3, "select_from": 2}
    with pytest.raises(ConfigError, match=r"(?s)agent.*select_from \(2\)"):
        parse_params(raw, "params.yaml")


# --- warm-up: teacher trajectories select the gold passages first --------------------------


NOISE = [
    Passage(f"n{i}", f"Kiss and Tell {i}", "Kiss and Tell is a song about Shirley Temple.")
    for i in range(6)
]


@pytest.mark.parametrize("first_search", ["question", "hop"])
def test_warm_up_trajectories_select_the_gold_passages_first(first_search):
    corpus = CORPUS + NOISE
    support = [{"title": p.title, "paragraph": p.text, "sentences": [p.text]} for p in CORPUS[:2]]
    q = replace(QUESTION, extra={"support": support})
    shape = WarmupShape(2, 40, 4, first_search=first_search, select_from=5)
    retriever = BM25Retriever.build(corpus, IndexConfig())
    (traj,), _ = build_trajectories([q], retriever, corpus, shape)
    assert traj.messages[0]["content"] == prompts.select_system_prompt(2)
    gold = {p.id for p in CORPUS[:2]}
    for step in traj.steps:
        assert len(step.candidate_ids) == 5 and len(step.passage_ids) == 2
        in_list = [pid for pid in step.candidate_ids if pid in gold]
        assert step.passage_ids[: len(in_list)] == in_list[:2]  # gold first, in retrieval order
    selections = [
        m["content"] for m in traj.messages if m["content"].startswith(prompts.SELECT_OPEN)
    ]
    assert len(selections) == len(traj.steps)
    for text, step in zip(selections, traj.steps, strict=True):
        sel = parse_selection(text, len(step.candidate_ids), 2)
        assert not sel.fallback
        assert selected(step.candidate_ids, sel) == step.passage_ids
