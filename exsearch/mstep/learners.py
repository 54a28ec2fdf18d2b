"""The M-step learners: `train.method` picks one, and each pairs a config section with a trainer.

As TRL pairs every trainer with its config (`SFTConfig`/`SFTTrainer`, `GRPOConfig`/
`GRPOTrainer`), a learner here is a function that takes what the E-step wrote, as it wrote it
(`EStepOutput`: the trajectories and their table of weights, scores and rewards), and trains the
model; its own keys are the `train.<method>` section (exsearch.config.training). The train stage
builds the `EStepOutput` and calls the learner, deciding nothing for it.

A new learner is one module with its `fit`, one entry in `LEARNERS` below and its section and
name in exsearch/config/training.py (tests/test_registries.py checks the two lists agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from exsearch.config import TrainConfig
from exsearch.mstep.grpo import fit as fit_grpo
from exsearch.mstep.inputs import EStepOutput
from exsearch.mstep.training import TrainResult
from exsearch.mstep.weighted import fit as fit_weighted


class Learner(Protocol):
    """A learner's `fit`: train `start` on what the E-step wrote; save the model to `out_dir`.

    `callbacks` are transformers `TrainerCallback`s the caller adds to the trainer (the train
    stage's: the loss recorded as it is logged).
    """

    def __call__(
        self,
        start: str | Path,
        e_step: EStepOutput,
        out_dir: str | Path,
        cfg: TrainConfig,
        *,
        callbacks: Sequence[Any] = (),
    ) -> TrainResult: ...


# `train.method` → the learner's fit(start_model, e_step, out_dir, train_config).
LEARNERS: dict[str, Learner] = {"weighted": fit_weighted, "grpo": fit_grpo}


def learner(method: str) -> Learner:
    """The learner named by `train.method`."""
    if method not in LEARNERS:
        raise ValueError(
            f"train.method: unknown learner {method!r}; choose one of {list(LEARNERS)}"
        )
    return LEARNERS[method]
