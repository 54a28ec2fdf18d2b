"""The weighted learner: which of the E-step's trajectories it trains on, and with what weight."""

from __future__ import annotations

import pandas as pd
import pytest

from exsearch.config import TrainConfig
from exsearch.mstep import EStepOutput, learner
from exsearch.mstep import weighted as weighted_learner
from exsearch.schema import Trajectory


def sampled(qid: str, sample: int, finish: str) -> Trajectory:
    chat = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "<answer>wrong</answer>"},
    ]
    return Trajectory(qid=qid, sample=sample, answers=["gold"], messages=chat, finish_reason=finish)


@pytest.fixture
def e_step() -> EStepOutput:
    endings = ["final", "max_steps", "malformed", "length"]
    trajectories = [sampled("q1", j, f) for j, f in enumerate(endings)]
    table = pd.DataFrame(
        {"qid": ["q1"] * 4, "sample": [0, 1, 2, 3], "weight": [0.4, 0.3, 0.2, 0.1]}
    )
    return EStepOutput(trajectories=trajectories, table=table)


@pytest.fixture
def trained_on(monkeypatch):
    """What `fit` hands the trainer, instead of training."""
    seen: list[dict] = []

    def fake_train(start, examples, out_dir, cfg, *, callbacks=()):
        seen.extend(examples)

    monkeypatch.setattr(weighted_learner, "train_weighted", fake_train)
    return seen


def test_every_sample_is_trained_on_with_its_weight_and_the_gold_answer(e_step, trained_on):
    learner("weighted")("start", e_step, "out", TrainConfig())
    assert [e["weight"] for e in trained_on] == [0.4, 0.3, 0.2, 0.1]
    assert all(e["messages"][-1]["content"] == "<answer>gold</answer>" for e in trained_on)


def test_well_formed_only_leaves_out_malformed_and_cut_samples(e_step, trained_on):
    cfg = TrainConfig(weighted={"well_formed_only": True})
    learner("weighted")("start", e_step, "out", cfg)
    assert [e["weight"] for e in trained_on] == [0.4, 0.3]  # final and max_steps
