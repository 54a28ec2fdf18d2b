"""The weighted-SFT learner, ExSearch's M-step (METHOD.md §2): `train.method: weighted`.

Every sampled trajectory is trained on with its answer replaced by the gold one, its loss scaled
by its E-step weight; trajectories weighted below `train.weighted.min_weight` are left out, and
replayed warm-up trajectories weigh 1 (`examples.py`, `training.py`). With
`train.weighted.well_formed_only`, so are trajectories that did not keep the format to the end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exsearch.config import TrainConfig
from exsearch.mstep.examples import replayed_examples, weighted_examples
from exsearch.mstep.inputs import EStepOutput
from exsearch.mstep.training import TrainResult, train_weighted
from exsearch.schema import Trajectory

log = logging.getLogger(__name__)


def well_formed(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    """The trajectories whose every turn parsed (`Trajectory.well_formed`)."""
    return [t for t in trajectories if t.well_formed]


def fit(
    start: str | Path,
    e_step: EStepOutput,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Fine-tune `start` on the E-step's weighted trajectories; save the model to `out_dir`.

    `callbacks` go to the trainer, as in `train_weighted`.
    """
    trajectories = e_step.trajectories
    if cfg.weighted.well_formed_only:
        trajectories = well_formed(trajectories)
        log.info(
            "well_formed_only: training on %d of %d trajectories (the others broke the format)",
            len(trajectories),
            len(e_step.trajectories),
        )
    examples = weighted_examples(trajectories, e_step.table) + replayed_examples(e_step.replay)
    return train_weighted(start, examples, out_dir, cfg, callbacks=callbacks)
