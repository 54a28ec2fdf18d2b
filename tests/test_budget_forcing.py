"""E-step budget forcing (`sample.min_searches`): a sample that ends its search too early is made
to search again, from its own cut turn, once per turn; evaluation never forces."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from exsearch import prompts
from exsearch.agent.loop import SearchAgent
from exsearch.config import ConfigError
from exsearch.config.params import AgentConfig, IndexConfig, parse_params
from exsearch.estep.sampling import Draw, sample_stats
from exsearch.retrieval import BM25Retriever
from exsearch.schema import Step
from tests.test_agent import CORPUS, QUESTION, ScriptedGenerator

ROOT = Path(__file__).resolve().parents[1]
CUT_TURN = "<record>Shirley Temple played Corliss Archer</record><think>enough</think>"


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever.build(CORPUS, IndexConfig())


def quitter(prompt: str) -> str:
    """Searches once, records, and finishes at once; searches well when made to."""
    if prompt.endswith(prompts.ANSWER_OPEN):
        return "Chief of Protocol</answer>"
    if prompt.endswith(prompts.SEARCH_OPEN):  # continued after a forced <search>
        return "Shirley Temple position</search>"
    if prompt.count(prompts.DOCS_OPEN) == 0:
        return "need the film</think><search>Kiss and Tell 1945 film</search>"
    return "Shirley Temple played Corliss Archer</record><think>enough</think><finish>"


def run(policy, retriever, **kw):
    gen = ScriptedGenerator(policy)
    agent = SearchAgent(gen, retriever, AgentConfig(max_steps=3, max_new_tokens=40))
    return agent.run([QUESTION], progress=False, **kw)[0], gen


def test_without_forcing_the_quitter_searches_once(retriever):
    rec, _ = run(quitter, retriever)
    assert [s.query for s in rec.steps] == ["Kiss and Tell 1945 film"]
    assert not any(s.forced for s in rec.steps)


def test_a_sample_that_finishes_early_is_cut_at_its_ending_and_made_to_search(retriever):
    rec, gen = run(quitter, retriever, min_searches=2)
    assert [s.query for s in rec.steps] == ["Kiss and Tell 1945 film", "Shirley Temple position"]
    assert [s.forced for s in rec.steps] == [False, True]
    # The forced turn is the model's own turn up to where it ended, then <search>: the chat
    # the M-step trains on reads as if the model had searched, with no <finish> in it.
    turns = [m["content"] for m in rec.messages if m["role"] == "assistant"]
    assert turns[1] == CUT_TURN + "<search>Shirley Temple position</search>"
    assert any(p.endswith(CUT_TURN + prompts.SEARCH_OPEN) for call in gen.calls for p in call)
    # Its record is kept, and once the minimum is met the sample finishes and answers.
    assert rec.steps[0].record == "Shirley Temple played Corliss Archer"
    assert (rec.finish_reason, rec.prediction) == ("final", "Chief of Protocol")
    # Part of a completion was thrown away: the sampling log-prob is no longer the chat's.
    assert rec.logprob is None


def test_a_forced_search_is_written_in_the_record_only_where_it_happened():
    assert "forced" not in Step("q").to_dict()
    assert Step("q", forced=True).to_dict()["forced"] is True
    assert Step.from_dict(Step("q", forced=True).to_dict()).forced


def test_a_sample_that_ends_its_forced_turn_too_is_not_forced_again(retriever):
    def stubborn(prompt):
        if prompt.endswith(prompts.SEARCH_OPEN):
            return "<finish>"
        return quitter(prompt)

    rec, _ = run(stubborn, retriever, min_searches=3)
    assert len(rec.steps) == 1 and rec.finish_reason == "final"
    assert rec.prediction == "Chief of Protocol"


def test_an_answer_written_without_finish_is_cut_and_forced_too(retriever):
    def blurter(prompt):
        if prompt.count(prompts.DOCS_OPEN) == 1 and not prompt.endswith(prompts.SEARCH_OPEN):
            return "Corliss</record><think>sure</think><answer>Paris</answer>"
        return quitter(prompt)

    rec, _ = run(blurter, retriever, min_searches=2)
    assert [s.forced for s in rec.steps] == [False, True]
    assert rec.prediction == "Chief of Protocol"


def test_baselines_and_evaluation_are_never_forced(retriever):
    rag, gen = run(lambda p: "Chief of Protocol</answer>", retriever, method="rag", min_searches=2)
    assert len(rag.steps) == 1 and len(gen.calls) == 1


def test_forcing_more_searches_than_max_steps_is_refused_before_any_work(retriever):
    with pytest.raises(ValueError, match="max_steps"):
        run(quitter, retriever, min_searches=4)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["agent"]["max_steps"], raw["sample"]["min_searches"] = 3, 4
    with pytest.raises(ConfigError, match=r"sample\.min_searches \(4\).*agent\.max_steps \(3\)"):
        parse_params(raw)


def test_the_sample_stats_count_forced_searches_only_where_there_were(retriever):
    forced, _ = run(quitter, retriever, min_searches=2)
    free, _ = run(quitter, retriever)
    draw = Draw([QUESTION], 1, 0)
    assert sample_stats([forced, free], draw, 2, 1.0)["forced_searches"] == 1
    assert "forced_searches" not in sample_stats([free], draw, 1, 1.0)
