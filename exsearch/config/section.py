"""The base of every params.yaml section: unknown keys are errors, values are checked strictly.

A module of its own so that the section modules (`data.py`, `training.py`) and `params.py`,
which gathers them into `Params`, build on it without importing one another in a circle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
