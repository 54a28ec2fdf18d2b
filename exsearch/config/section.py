"""The base of every params.yaml section: unknown keys are errors, values are checked strictly.

Floats must be finite: a `learning_rate: .inf` would pass `gt=0` and train a model of NaNs
while the stage exits 0. Seeds are bounded so that a seed plus the offsets the stages add to it
(an iteration's, a sampling round's) stays a valid seed for torch, numpy and `random`.

A module of its own so that the section modules (`data.py`, `training.py`) and `params.py`,
which gathers them into `Params`, build on it without importing one another in a circle.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

SEED_MAX = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values strictly checked, floats finite."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
