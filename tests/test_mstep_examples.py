import pandas as pd
import pytest
from chats import chat

from exsearch import prompts as P
from exsearch.mstep.examples import replay_draw, replayed_examples, weighted_examples
from exsearch.schema import Trajectory


def trajectory(qid, sample, answer="Paris"):
    return Trajectory(qid=qid, sample=sample, answers=[f" {answer} "], messages=chat(answer="x"))


def warmup_trajectories(questions):
    return [Trajectory(qid=f"w{i}", messages=chat(question=q)) for i, q in enumerate(questions)]


def weights(*rows):
    return pd.DataFrame([{"qid": q, "sample": s, "weight": w} for q, s, w in rows])


def test_each_trajectory_gets_its_own_weight_and_the_gold_answer():
    trajectories = [trajectory("q1", 0, "Paris"), trajectory("q1", 1, "Rome")]
    examples = weighted_examples(trajectories, weights(("q1", 1, 0.25), ("q1", 0, 0.75)))
    assert [e["weight"] for e in examples] == [0.75, 0.25]
    assert [e["messages"][-1]["content"] for e in examples] == [
        P.answer_turn("Paris"),
        P.answer_turn("Rome"),
    ]
    assert examples[0]["messages"][:-1] == trajectories[0].messages[:-1]


def test_a_trajectory_without_a_weight_is_an_error_naming_it():
    with pytest.raises(ValueError, match="qid='q2' sample=3 has no weight"):
        weighted_examples([trajectory("q2", 3)], weights(("q2", 0, 1.0)))


def test_replayed_warmup_trajectories_weigh_one_each():
    warmup = warmup_trajectories([f"Question {i}?" for i in range(10)])
    picked = replayed_examples(replay_draw(warmup, 4, "iter_1", seed=0))
    assert len(picked) == 4 and all(e["weight"] == 1.0 for e in picked)
    assert all(any(e["messages"] == w.messages for w in warmup) for e in picked)


def test_the_replay_draw_is_fixed_by_seed_and_iteration():
    warmup = warmup_trajectories([f"Question {i}?" for i in range(20)])

    def draw(iteration, seed):
        return [t.messages[1] for t in replay_draw(warmup, 5, iteration, seed)]

    assert draw("iter_1", 0) == draw("iter_1", 0)
    assert draw("iter_1", 0) != draw("iter_2", 0)
    assert draw("iter_1", 0) != draw("iter_1", 1)


def test_replay_takes_at_most_what_there_is_and_nothing_for_zero():
    warmup = warmup_trajectories(["Who?"] * 3)
    assert len(replay_draw(warmup, 10, "iter_1", seed=0)) == 3
    assert replay_draw(warmup, 0, "iter_1", seed=0) == []
