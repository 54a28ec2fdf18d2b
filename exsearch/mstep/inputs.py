"""What every M-step learner is given: the E-step's output, as the E-step wrote it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from exsearch.schema import Trajectory


@dataclass(frozen=True)
class EStepOutput:
    """What the E-step of one iteration wrote, handed to the learner whole.

    Attributes:
        trajectories: The sampled trajectories (runs/<iter>/trajectories.jsonl), with the
            sampling's token counts and summed log-probabilities.
        table: One row per trajectory (runs/<iter>/weights.parquet): `qid`, `sample`, `score`
            (the gold answer's mean log-prob), `weight` (weigh.scheme), `f1` and `correct`
            (the sampled answer against the gold, a reward), `prediction`, `gold`.
        replay: Warm-up trajectories to mix in (`train.replay`), already drawn.
    """

    trajectories: list[Trajectory]
    table: pd.DataFrame
    replay: list[Trajectory] = field(default_factory=list)
