"""The campaign's parent run: opened by a flow or `exsearch repro`, or found by the stages.

Which parent a stage run nests under: `EXSEARCH_PARENT_RUN_ID`, set by the Prefect flow and by
`exsearch repro`. Not `MLFLOW_RUN_ID`: when it is set MLflow ignores `parent_run_id`
(mlflow/mlflow#15713). Under a bare `dvc repro` / `dvc exp run` the stages find-or-create the
parent tagged with the same `campaign_key` (see tracking/provenance.py): one parent per DVC
invocation.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exsearch.config import Params
from tracking.provenance import campaign_key, git_commit, lock_outs
from tracking.run_log import StageRun
from tracking.store import (
    StoreDown,
    TrackingError,
    connect,
    open_client,
    reset_store_state,
    tracking_enabled,
    tracking_uri,
    unusable,
    warn_on_error,
)

PARENT_ENV = "EXSEARCH_PARENT_RUN_ID"

log = logging.getLogger(__name__)


def _campaign_tags(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    tags = {"role": "campaign", "git_commit": git_commit()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return {**tags, **(extra or {})}


def _log_params_file(client: Any, run_id: str) -> None:
    if Path("params.yaml").is_file():
        warn_on_error("log params.yaml", client.log_artifact, run_id, "params.yaml")


def start_campaign_run(
    params: Params, name: str | None = None, tags: Mapping[str, str] | None = None
) -> str | None:
    """Open a parent run for a campaign (flow run, `exsearch repro`); None if tracking is off.

    Pass its id to the stage processes as `EXSEARCH_PARENT_RUN_ID`; close it with
    `end_campaign_run`.
    """
    reset_store_state()  # a new campaign (e.g. a scheduled run) gives the store a new chance
    conn = connect(params)
    if conn is None:
        return None
    client, exp_id = conn
    try:
        run_id = client.create_run(exp_id, run_name=name, tags=_campaign_tags(tags)).info.run_id
    except Exception as e:
        unusable(params, "create the campaign run", e)
        return None
    _log_params_file(client, run_id)
    return run_id


def end_campaign_run(run_id: str | None, status: str = "FINISHED") -> None:
    """Close a parent run opened by `start_campaign_run` (FINISHED, FAILED or KILLED)."""
    if run_id:
        warn_on_error("close the campaign run", open_client().set_terminated, run_id, status)


def tag_run(run_id: str | None, tags: Mapping[str, Any]) -> None:
    """Set tags on a run by id (e.g. the DVC experiment name, known only after `dvc exp run`)."""
    if run_id:
        StageRun(open_client(), run_id).set_tags(tags)


def resolve_parent(client: Any, exp_id: str) -> tuple[str, bool]:
    """`(parent_run_id, owned)`; an owned (auto-created) parent follows its stages' status."""
    if parent := os.environ.get(PARENT_ENV):
        try:
            client.get_run(parent)
        except StoreDown:
            raise
        except Exception as e:
            raise TrackingError(
                f"{PARENT_ENV}={parent}: no such run in {tracking_uri()} ({e}). Unset it, or "
                "point MLFLOW_TRACKING_URI at the store the campaign was started with."
            ) from e
        return parent, False
    key = campaign_key()
    found = client.search_runs(
        [exp_id], f"tags.campaign_key = '{key}'", max_results=1, order_by=["start_time DESC"]
    )
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id, True
    label = os.environ.get("DVC_EXP_NAME") or git_commit()[:8] or "no-git"
    tags = _campaign_tags({"campaign_key": key})
    run_id = client.create_run(exp_id, run_name=f"repro {label} {key[:6]}", tags=tags).info.run_id
    _log_params_file(client, run_id)
    return run_id, True


def record_lock_hashes(parent_id: str | None, lock_file: str | os.PathLike = "dvc.lock") -> int:
    """Tag the finished stage runs under `parent_id` with their outs' md5 from dvc.lock.

    DVC writes a stage's hashes only after the stage exits, so a stage cannot log its own:
    the flow calls this after each stage, `exsearch repro` at the end, and each stage at its
    start (catching up on the ones before it). Returns how many runs were tagged.
    """
    if not parent_id or not tracking_enabled():
        return 0
    client, tagged, seen = open_client(), 0, set()
    try:
        outs = lock_outs(lock_file)
        runs = client.search_runs(
            [client.get_run(parent_id).info.experiment_id],
            f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'FINISHED'",
            order_by=["start_time DESC"],
        )
    except StoreDown:
        return 0
    except Exception as e:
        log.warning("MLflow: could not read %s or the runs under %s: %s", lock_file, parent_id, e)
        return 0
    for run in runs:  # newest first: only a stage's latest run owns the current hashes
        address = run.data.tags.get("dvc_stage")
        if address in seen or address not in outs:
            continue
        seen.add(address)
        if "dvc.outs_recorded" not in run.data.tags:
            tags = {
                "dvc.out." + re.sub(r"[^\w./ -]", "_", p): md5 for p, md5 in outs[address].items()
            }
            StageRun(client, run.info.run_id).set_tags({**tags, "dvc.outs_recorded": "true"})
            tagged += 1
    return tagged
