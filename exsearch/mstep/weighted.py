"""The weighted-SFT learner, ExSearch's M-step (METHOD.md §2): `train.method: weighted`.

Every sampled trajectory is trained on with its answer replaced by the gold one, its loss scaled
by its E-step weight; trajectories weighted below `train.weighted.min_weight` are left out, and
replayed warm-up trajectories weigh 1 (`examples.py`, `training.py`).
"""

from __future__ import annotations

from pathlib import Path

from exsearch.config import TrainConfig
from exsearch.mstep.examples import replayed_examples, weighted_examples
from exsearch.mstep.inputs import EStepOutput
from exsearch.mstep.training import TrainResult, train_weighted


def fit(
    start: str | Path, e_step: EStepOutput, out_dir: str | Path, cfg: TrainConfig
) -> TrainResult:
    """Fine-tune `start` on the E-step's weighted trajectories; save the model to `out_dir`."""
    examples = weighted_examples(e_step.trajectories, e_step.table)
    return train_weighted(start, examples + replayed_examples(e_step.replay), out_dir, cfg)
