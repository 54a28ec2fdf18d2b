"""E-step sampling in resumable shards."""

from __future__ import annotations

from dataclasses import replace

import pytest

from exsearch.agent.loop import Decoding, SearchAgent
from exsearch.config.params import AgentConfig, GenerationConfig, IndexConfig, ModelConfig
from exsearch.data.trajectories import write_trajectories
from exsearch.estep.sampling import iteration_questions, sample_in_shards, scored, shard_seed
from exsearch.generation.hf import HFGenerator
from exsearch.retrieval import BM25Retriever
from exsearch.schema import Passage, Question, Step, Trajectory

PASSAGES = [
    Passage(f"p{i}", f"Title {i}", f"city river album number {i} founded") for i in range(20)
]
# Questions of one shard start differently, and each shares a long start with questions of other
# shards but differs in length: the keys/values an earlier shard leaves in the prefix cache are
# then ones a fresh run computes in a forward pass of another length (other bits in bfloat16).
QUESTIONS = [
    Question(f"q{i}", text, [f"Title {i}"], "toy")
    for i, text in enumerate(
        [
            "Which city has river number 0?",
            "Who founded album 1?",
            "Which city has river number 2 and the album 2 founded in 1999?",
            "Who founded album 3 with the band of the national team?",
            "Which city has river number 4, album 4 and film 4?",
            "Who founded album 5 in the year after the war?",
        ]
    )
]


class Crashing:
    """Wraps a generator, fails on its n-th call (a run killed half-way), records every prompt."""

    def __init__(self, gen, fail_at: int = -1):
        self.gen, self.fail_at, self.calls, self.prompts = gen, fail_at, 0, []

    def __getattr__(self, name):
        return getattr(self.gen, name)

    def generate(self, prompts, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        self.prompts.extend(prompts)
        return self.gen.generate(prompts, **kwargs)


@pytest.fixture(scope="module")
def agent_parts(tiny_model_dir):
    # bfloat16, the default dtype: reused keys/values differ in their last bits from freshly
    # computed ones, so anything carried over from an earlier shard shows in the samples.
    gen = HFGenerator.from_config(
        tiny_model_dir, ModelConfig(dtype="bfloat16"), GenerationConfig(batch_size=2)
    )
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


def new_process(gen):
    """What a fresh `python -m stages.sample` starts with: nothing cached."""
    gen.prefix_cache.clear()
    return gen


def file_state(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def asked(prompts):
    """Ids of the questions whose trajectories the prompts continue."""
    return {q.id for q in QUESTIONS if any(q.question in p for p in prompts)}


def test_a_resumed_bf16_run_reuses_finished_shards_and_writes_the_same_bytes(agent_parts, tmp_path):
    gen, retriever, cfg = agent_parts
    whole = sample(SearchAgent(new_process(gen), retriever, cfg), tmp_path / "whole")
    write_trajectories(tmp_path / "whole.jsonl", whole)

    crashing = Crashing(new_process(gen), fail_at=4)  # dies inside the second shard
    with pytest.raises(RuntimeError, match="killed"):
        sample(SearchAgent(crashing, retriever, cfg), tmp_path / "resumed")
    kept = sorted((tmp_path / "resumed").iterdir())
    assert [p.name for p in kept] == ["shard_00000.jsonl"]  # none half-written
    before = [file_state(p) for p in kept]

    resuming = Crashing(new_process(gen))
    resumed = sample(SearchAgent(resuming, retriever, cfg), tmp_path / "resumed")
    write_trajectories(tmp_path / "resumed.jsonl", resumed)

    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert len(resumed) == len(QUESTIONS) * 2
    # Reused, not resampled: the kept shards are the same files, untouched, and the resumed run
    # asked the model only about the questions of the missing shards.
    assert [file_state(p) for p in kept] == before
    assert asked(resuming.prompts) == {"q2", "q3", "q4", "q5"}


def test_a_shard_sampled_after_others_equals_that_shard_sampled_alone(agent_parts, tmp_path):
    gen, retriever, cfg = agent_parts
    everything = sample(SearchAgent(new_process(gen), retriever, cfg), tmp_path / "all")
    alone = SearchAgent(new_process(gen), retriever, cfg).run(
        QUESTIONS[2:4],
        samples=2,
        decoding=Decoding(temperature=1.0, top_p=0.95, seed=shard_seed(3, 1)),
    )
    scores = gen.gold_answer_scores(alone, progress=False)  # as the shard is scored
    assert [replace(t, gold_score=x) for t, x in zip(alone, scores, strict=True)] == everything[4:8]


def test_every_sampled_trajectory_carries_its_gold_answer_score(agent_parts, tmp_path):
    gen, retriever, cfg = agent_parts
    sampled = sample(SearchAgent(new_process(gen), retriever, cfg), tmp_path / "s")
    fresh = new_process(gen).gold_answer_scores(sampled, progress=False)
    # bfloat16: keys/values reused from decoding differ in their last bits from fresh ones.
    assert [t.gold_score for t in sampled] == pytest.approx(fresh, abs=0.15)
    assert all(t.gold_score < 0 for t in sampled)


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


class ScoringProbe:
    """A generator stand-in that scores a chat by its length and remembers what it scored."""

    def __init__(self):
        self.chats: list[list[dict]] = []

    def gold_answer_scores(self, trajectories, *, progress=True):
        self.chats.extend(t.messages for t in trajectories)
        return [-float(len(t.messages[1]["content"])) for t in trajectories]


def recorded(*records: str | None) -> Trajectory:
    steps = [Step(query=f"q{i}", record=r) for i, r in enumerate(records)]
    chat = [{"role": "user", "content": "the whole sampled chat"}] * 2
    return Trajectory(qid="q", question="Who?", answers=["Ann"], steps=steps, messages=chat)


def test_the_records_score_reads_only_the_question_and_what_was_recorded():
    probe = ScoringProbe()
    (out,) = scored([recorded("Ann wrote it.", None, "It was 1999.")], probe, "records")
    (chat,) = probe.chats
    user = chat[1]["content"]
    assert "[1] Ann wrote it." in user and "[2] It was 1999." in user and "Who?" in user
    assert "the whole sampled chat" not in user and "[3]" not in user
    assert out.gold_score == -float(len(user))
    assert out.messages == recorded().messages  # the record keeps its own chat


def test_the_trajectory_score_reads_the_whole_chat_and_nothing_recorded_is_said():
    probe = ScoringProbe()
    scored([recorded("kept")], probe, "trajectory")
    assert probe.chats[0][1]["content"] == "the whole sampled chat"
    scored([recorded()], probe, "records")
    assert "(nothing recorded)" in probe.chats[1][1]["content"]
    with pytest.raises(ValueError, match="sample.score"):
        scored([recorded()], probe, "answers")
