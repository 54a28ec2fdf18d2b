"""E-step sampling in resumable shards."""

from __future__ import annotations

import pytest

from exsearch.agent import SearchAgent
from exsearch.config import AgentConfig, GenerationConfig, IndexConfig, ModelConfig
from exsearch.hf_backend import HFGenerator
from exsearch.retrieval import BM25Retriever
from exsearch.sampling import iteration_questions, sample_in_shards, shard_seed
from exsearch.schema import Passage, Question

PASSAGES = [
    Passage(f"p{i}", f"Title {i}", f"city river album number {i} founded") for i in range(20)
]
QUESTIONS = [
    Question(f"q{i}", f"Which city has river number {i}?", [f"Title {i}"], "toy") for i in range(6)
]


class Crashing:
    """Wraps a generator and fails on its n-th call, like a run killed half-way."""

    def __init__(self, gen, fail_at: int):
        self.gen, self.fail_at, self.calls = gen, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.gen, name)

    def generate(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        return self.gen.generate(*args, **kwargs)


@pytest.fixture(scope="module")
def agent_parts(tiny_model_dir):
    gen = HFGenerator.from_config(tiny_model_dir, ModelConfig(), GenerationConfig(batch_size=8))
    cfg = AgentConfig(
        max_steps=2, max_new_tokens=10, answer_max_new_tokens=5, max_context_tokens=512, top_k=2
    )
    return gen, BM25Retriever.build(PASSAGES, IndexConfig()), cfg


def sample(agent, shard_dir):
    return sample_in_shards(
        QUESTIONS,
        agent,
        k=2,
        temperature=1.0,
        top_p=0.95,
        seed=3,
        shard_size=2,
        shard_dir=shard_dir,
    )


def test_resampling_after_a_crash_gives_the_same_trajectories(agent_parts, tmp_path):
    gen, retriever, cfg = agent_parts
    whole = sample(SearchAgent(gen, retriever, cfg), tmp_path / "whole")

    crashing = Crashing(gen, fail_at=4)  # dies inside the second shard
    with pytest.raises(RuntimeError, match="killed"):
        sample(SearchAgent(crashing, retriever, cfg), tmp_path / "resumed")
    kept = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert kept == ["shard_00000.jsonl"]  # finished shards survive, no half-written one

    counting = Crashing(gen, fail_at=-1)
    resumed = sample(SearchAgent(counting, retriever, cfg), tmp_path / "resumed")
    assert [r["messages"] for r in resumed] == [r["messages"] for r in whole]
    assert len(resumed) == len(QUESTIONS) * 2


def test_each_shard_has_its_own_fixed_seed():
    assert shard_seed(3, 0) != shard_seed(3, 1)
    assert shard_seed(3, 1) == shard_seed(3, 1)


POOL = [Question(f"p{i}", f"Question {i}?", ["a"], "toy") for i in range(23)]


def test_consecutive_iterations_draw_disjoint_questions_and_the_same_on_a_rerun():
    draws = [iteration_questions(POOL, k, 5, seed=7) for k in (1, 2, 3, 4)]
    ids = [{q.id for q in d.questions} for d in draws]
    assert all(len(i) == 5 for i in ids)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not ids[a] & ids[b]
    again = [{q.id for q in iteration_questions(POOL, k, 5, seed=7).questions} for k in (1, 2)]
    assert again == ids[:2]
    assert {q.id for q in iteration_questions(POOL, 1, 5, seed=8).questions} != ids[0]


def test_warmup_questions_are_never_drawn():
    warm = {f"p{i}" for i in range(10)}
    for k in (1, 2):
        draw = iteration_questions(POOL, k, 6, seed=0, exclude=warm)
        assert draw.pool_size == 13 and not {q.id for q in draw.questions} & warm


def test_a_used_up_pool_starts_a_new_pass_and_says_so():
    first = [iteration_questions(POOL, k, 10, seed=0) for k in (1, 2)]
    third = iteration_questions(POOL, 3, 10, seed=0)
    assert [d.pass_number for d in first] == [0, 0] and third.pass_number == 1


def test_no_question_left_after_the_warmup_is_a_clear_error():
    with pytest.raises(ValueError, match="no training question left"):
        iteration_questions(POOL, 1, 5, seed=0, exclude={q.id for q in POOL})
