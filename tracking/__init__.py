"""MLflow record of a campaign: one parent run per campaign, one nested run per stage execution.

    with stage_run(params, stage="train", iteration="iter_2") as run:   # in a stage
        run.log_metrics({"loss": 0.12})
    parent = start_campaign_run(params, "campaign nightly")             # in a flow
    ...  # the stages run with EXSEARCH_PARENT_RUN_ID=parent, then:
    record_lock_hashes(parent); end_campaign_run(parent, "FINISHED")

A package of its own, beside `stages/` and `flows/`, because both use it: the stage CLIs record
their runs through it and the flows and `exsearch repro` open and close the parent run. It imports
neither of them, and the library (`exsearch/`) knows nothing of it. Its modules: `store` (where
runs go, opening the store, a bounded cost when it fails), `campaign` (the parent run),
`stage` (a stage's nested run), `run_log` (what is logged onto a run), `trainer_log` (the
M-step's loss as it is logged: `LiveMetrics`, imported on first use, as it needs transformers,
which the flows do not) and `provenance` (git commit, launching DVC process, dvc.lock hashes).
Code outside the package imports from here.
"""

from typing import Any

from tracking.campaign import (
    PARENT_ENV,
    end_campaign_run,
    record_lock_hashes,
    start_campaign_run,
    tag_run,
)
from tracking.run_log import DatasetRef, StageRun, checkpoint_name, iteration_step
from tracking.stage import log_iteration_metrics, stage_run
from tracking.store import SWITCH_ENV, TrackingError, tracking_uri

__all__ = [
    "PARENT_ENV",
    "DatasetRef",
    "LiveMetrics",
    "SWITCH_ENV",
    "StageRun",
    "TrackingError",
    "checkpoint_name",
    "end_campaign_run",
    "iteration_step",
    "log_iteration_metrics",
    "record_lock_hashes",
    "stage_run",
    "start_campaign_run",
    "tag_run",
    "tracking_uri",
]


def __getattr__(name: str) -> Any:
    # `LiveMetrics` on first use (PEP 562): its module imports transformers.
    if name == "LiveMetrics":
        from tracking.trainer_log import LiveMetrics

        return LiveMetrics
    raise AttributeError(f"module 'tracking' has no attribute {name!r}")
