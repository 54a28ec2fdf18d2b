"""One stage execution as a nested MLflow run: `stage_run` opens it, closes it with the outcome.

Every stage wraps its work in `stage_run` and logs through the `StageRun` it yields::

    params = setup(args)
    with stage_run(params, stage="train", iteration="iter_2") as run:
        ...  # compute, then write the outputs atomically
        run.log_metrics({"loss": 0.12})
        run.log_checkpoint("iter_2", "models/iter_2")
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from exsearch.config import Params
from tracking.campaign import record_lock_hashes, resolve_parent
from tracking.provenance import git_commit
from tracking.run_log import DatasetRef, StageRun
from tracking.store import (
    StoreDown,
    TrackingError,
    connect,
    store_failed,
    tracking_uri,
    unusable,
    warn_on_error,
)

# The open stage runs of this process, innermost last (`log_iteration_metrics` logs on it).
_ACTIVE: list[StageRun] = []


def _sections_hash(params: Params, sections: list[str]) -> str:
    if len(sections) == 1:
        return params.section_hash(sections[0])
    blob = "".join(params.section_hash(s) for s in sections)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _open_stage_run(
    params: Params, stage: str, iteration: str | None, sections: list[str] | None
) -> tuple[StageRun, bool]:
    """Create the nested run: `(run, parent_is_owned)`; a no-op run when tracking is off."""
    if (conn := connect(params)) is None:
        return StageRun(), False
    client, exp_id = conn
    if sections is None:
        sections = [stage] if stage in Params.model_fields else []
    try:
        parent_id, owned = resolve_parent(client, exp_id)
        tags = {
            "mlflow.parentRunId": parent_id,
            "role": "stage",
            "stage": stage,
            "dvc_stage": os.environ.get("DVC_STAGE") or "@".join(filter(None, [stage, iteration])),
            "iteration": iteration or "",
            "git_commit": git_commit(),
            "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
            "params_hash": _sections_hash(params, sections) if sections else "",
        }
        exp_id = client.get_run(parent_id).info.experiment_id
        run_id = client.create_run(
            exp_id,
            run_name="/".join(filter(None, [iteration, stage])),
            tags={k: v for k, v in tags.items() if v},
        ).info.run_id
    except TrackingError:
        raise
    except Exception as e:
        unusable(params, f"open the run of stage {stage}", e.__cause__ or e)
        return StageRun(), False
    run = StageRun(
        client,
        run_id,
        parent_id,
        params.tracking.log_models,
        params.tracking.required,
        experiment_id=exp_id,
    )
    run.log_params({s: getattr(params, s).model_dump(mode="json") for s in sections})
    record_lock_hashes(parent_id)
    if store_failed():  # the store failed while the run was being set up
        unusable(params, f"set up the run of stage {stage}", StoreDown(store_failed()))
        return StageRun(), False
    return run, owned


@contextlib.contextmanager
def stage_run(
    params: Params, stage: str, iteration: str | None = None, sections: list[str] | None = None
) -> Iterator[StageRun]:
    """Record one stage execution as a nested run named `iteration/stage` (or `stage`).

    Logs the params `sections` (default: the section named like the stage, if any) and tags
    stage, iteration, DVC stage address, git commit, DVC experiment and params hash. Inside the
    block the run is also MLflow's active run, so `mlflow.log_*` calls and the transformers
    MLflow callback land on it. An exception marks the run (and an auto-created parent) FAILED
    and propagates. Raises TrackingError, before the block runs, if the store is unusable and
    tracking is required, or from the block if the store fails then (the stage CLIs turn it
    into their `error:` line: stages/_common.py).
    """
    run, owned = _open_stage_run(params, stage, iteration, sections)
    _ACTIVE.append(run)
    if not run.enabled:
        try:
            yield run
        finally:
            _ACTIVE.pop()
        return

    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    warn_on_error(
        "activate the run",
        mlflow.start_run,
        run_id=run.run_id,
        log_system_metrics=system_metrics_on(params),
    )
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except TrackingError:  # the store failed mid-stage and tracking is required
        raise
    except SystemExit as e:
        status = "FINISHED" if e.code in (None, 0) else "FAILED"
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception as e:
        run.set_tags({"error": f"{type(e).__name__}: {e}"[:5000]})
        raise
    finally:
        _ACTIVE.pop()
        _close(run, owned, status)


def system_metrics_on(params: Params) -> bool:
    """Whether MLflow samples CPU, memory and disk onto the stage run (`tracking.system_metrics`).

    `auto`: with a local store only. MLflow sends the samples from a thread of its own, outside
    the bounded cost of a failing server (tracking.store), and waits for it when the run ends.
    """
    setting = params.tracking.system_metrics
    if setting == "auto":
        return not tracking_uri().startswith(("http://", "https://"))
    return setting


def _close(run: StageRun, owned: bool, status: str) -> None:
    """End the stage run (MLflow's active run) with `status`; an owned parent follows it."""
    import mlflow

    active = mlflow.active_run()
    if active and active.info.run_id == run.run_id:
        if store_failed():
            # MLflow would end its active run at exit anyway; end it now, for one more
            # bounded call at most (it leaves the active run whatever the store says).
            with contextlib.suppress(Exception):
                mlflow.end_run(status=status)
        else:
            warn_on_error("close the stage run", mlflow.end_run, status=status)
    else:
        warn_on_error("close the stage run", run.client.set_terminated, run.run_id, status)
    if owned:
        warn_on_error("close the campaign run", run.client.set_terminated, run.parent_id, status)


def log_iteration_metrics(
    params: Params,
    iteration: str,
    metrics: Mapping[str, Any],
    model_id: str | None = None,
    dataset: DatasetRef | None = None,
) -> None:
    """Log one iteration's evaluation metrics on the stage run and, with step k, on the parent.

    Call inside `stage_run` (the evaluate stage); `params` keeps the call shape uniform, the
    enclosing `stage_run` decides where the metrics go. Nested dicts become `a/b` keys. On the
    stage run they are linked to the checkpoint's LoggedModel and the dev set's dataset input.
    """
    del params
    if not _ACTIVE:
        raise RuntimeError("log_iteration_metrics must be called inside `with stage_run(...)`")
    _ACTIVE[-1].log_iteration_metrics(iteration, metrics, model_id, dataset)
