"""MLflow record of a campaign: one parent run per campaign, one nested run per stage execution.

Every stage wraps its work in `stage_run` and logs through the handle it yields::

    params = setup(args)
    with stage_run(params, stage="train", iteration="iter_2") as run:
        ...  # compute, then write the outputs atomically
        run.log_metrics({"loss": 0.12})
        run.log_model_dir("models/iter_2")

Where runs go: `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the working directory (the
project root under DVC), experiment `params.tracking.experiment`. `EXSEARCH_TRACKING=off` turns
tracking off (tests, quick trials).

Which parent: `EXSEARCH_PARENT_RUN_ID`, set by the Prefect flow and by `exsearch repro`. Not
`MLFLOW_RUN_ID`: when it is set MLflow ignores `parent_run_id` (mlflow/mlflow#15713). Under a bare
`dvc repro` / `dvc exp run` the stages find-or-create the parent tagged with the same
`campaign_key` (see stages/_provenance.py): one parent per DVC invocation.

Tracking has a bounded cost. An unusable store is detected before the stage's work starts (an
error, or a warning and no tracking when `tracking.required: false`). A store that fails later
(a server that dies, or answers with errors) is given up on at its first failed call: that call
costs at most two attempts of `MLFLOW_HTTP_REQUEST_TIMEOUT` seconds (MLflow's own client retries
for minutes by default; the defaults set below make it 2 × 5 s, no Retry-After waits), and no
MLflow call is made for the rest of the process but closing MLflow's active run (one more
bounded call). Then the stage fails (`tracking.required: true`; DVC does not record its
outputs) or goes on untracked with one warning. A failing or vanished server thus costs a stage
at most ~25 s (a 5 s health probe and two bounded calls), a refused connection almost nothing.
Answers that are not failures (a 4xx such as "already exists") and local mistakes (an artifact
file that is not there) are warnings and leave tracking on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from exsearch.config import Params, checkpoint_step
from stages._common import fail
from stages._provenance import campaign_key, git_commit, lock_outs

PARENT_ENV = "EXSEARCH_PARENT_RUN_ID"
SWITCH_ENV = "EXSEARCH_TRACKING"
DEFAULT_URI = "sqlite:///mlflow.db"

# Set before mlflow is imported (lazily, below): nothing may call out to the internet.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# A bounded cost per call to a tracking server (MLflow's defaults: 7 retries with exponential
# backoff, 120 s timeouts, and Retry-After honoured without a cap: minutes per call). Any of
# these set in the environment wins.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "1.0")
os.environ.setdefault("MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER", "false")
HEALTH_TIMEOUT_S = 5
# MLflow 3's UI opens an experiment by its kind tag (ExperimentKind in the UI's code); without it
# the campaign opened in the GenAI "Overview" (0 traces). This is the "Model training" view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

log = logging.getLogger(__name__)
_ACTIVE: list[StageRun] = []


class TrackingError(RuntimeError):
    """The MLflow store cannot be used; the message names the URI and what to do."""


class StoreDown(RuntimeError):
    """The store failed once in this process; no further MLflow call is made (see module doc)."""


# Why the store was given up on in this process; empty while it works.
_FAILED: list[str] = []


def store_failed() -> str | None:
    """Why this process stopped calling the store, or None while it is in use."""
    return _FAILED[0] if _FAILED else None


def reset_store_state() -> None:
    """Give the store a new chance (a new campaign in a long-lived process; tests)."""
    _FAILED.clear()


def _is_answer(err: Exception) -> bool:
    """A 4xx-class MLflow error is the store answering (e.g. "already exists"), not failing."""
    status = getattr(err, "get_http_status_code", None)
    return status is not None and 400 <= status() < 500


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the store once; its first failure is the last call of this process (`StoreDown`)."""
    if _FAILED:
        raise StoreDown(_FAILED[0])
    try:
        return fn(*args, **kwargs)
    except StoreDown:
        raise
    except Exception as e:
        if _is_answer(e):
            raise
        why = f"could not {what} ({type(e).__name__}: {str(e)[:500]})"
        _FAILED.append(why)
        log.warning(
            "MLflow tracking store %s: %s. No further MLflow calls in this process.",
            tracking_uri(),
            why,
        )
        raise StoreDown(why) from e


class _Guarded:
    """An MlflowClient whose every call goes through `_call` (bounded cost, one failure)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: _call(name.replace("_", " "), attr, *args, **kwargs)


def tracking_uri() -> str:
    """The store every stage and flow of this project writes to, a SQLite path made absolute.

    A relative SQLite path is taken from `DVC_ROOT` when DVC sets it (for `dvc exp run --temp`
    or queued experiments that is the workspace, not the executor's temp copy), else from the
    cwd. Absolute also because MLflow caches stores by URI: a relative one would keep pointing
    at the first directory it was opened from after a chdir (flows, tests).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        base = Path(os.environ.get("DVC_ROOT") or ".")
        return prefix + str((base / uri[len(prefix) :]).resolve())
    return uri


def _artifact_location(uri: str) -> str | None:
    """`mlruns/` beside a SQLite store, wherever the experiment happens to be created from."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").as_uri()
    return None  # a server decides


def tracking_enabled() -> bool:
    """False when `EXSEARCH_TRACKING` is off/0/false/no."""
    return os.environ.get(SWITCH_ENV, "on").strip().lower() not in {"off", "0", "false", "no"}


def _unusable(params: Params, what: str, err: Exception) -> None:
    """Raise TrackingError if tracking is required, else warn (the caller goes on untracked)."""
    if not _FAILED:
        _FAILED.append(f"could not {what} ({type(err).__name__}: {err})")
    msg = (
        f"MLflow tracking store {tracking_uri()}: could not {what} ({type(err).__name__}: {err}). "
        "Start the tracking server or set MLFLOW_TRACKING_URI to a reachable store (default "
        "sqlite:///mlflow.db in the project root); or set `tracking.required: false` in "
        f"params.yaml (or {SWITCH_ENV}=off) to run without tracking."
    )
    if params.tracking.required:
        raise TrackingError(msg) from err
    log.warning("%s Continuing without tracking.", msg)


def connect(params: Params) -> tuple[Any, str] | None:
    """Open the store and the project's experiment: `(MlflowClient, experiment_id)`.

    None when tracking is switched off, or when the store is unusable and `tracking.required`
    is false (with a warning); TrackingError when it is unusable and required.
    """
    if not tracking_enabled():
        return None
    if why := store_failed():
        _unusable(params, "use the store again after an earlier failure", StoreDown(why))
        return None
    uri = tracking_uri()
    try:
        if uri.startswith(("http://", "https://")):
            # Probe first: a server that is not there fails in one short request.
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S).close()
        import mlflow

        client = _Guarded(mlflow.MlflowClient(tracking_uri=uri))
        name = params.tracking.experiment
        if (exp := client.get_experiment_by_name(name)) is None:
            kind = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            try:
                return client, client.create_experiment(name, _artifact_location(uri), kind)
            except StoreDown:
                raise
            except Exception:  # another process created it first (the store answered)
                exp = client.get_experiment_by_name(name)
        if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tag, or by someone else
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return client, exp.experiment_id
    except Exception as e:
        _unusable(params, "open the experiment", e.__cause__ or e)
        return None


def _warn_on_error(what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
    """Call the store; False (with a warning, once per failed store) if it did not work."""
    try:
        _call(what, fn, *args, **kwargs)
        return True
    except StoreDown:
        return False  # warned once, when the store failed
    except Exception as e:
        log.warning("MLflow: could not %s in %s: %s: %s", what, tracking_uri(), type(e).__name__, e)
        return False


def _campaign_tags(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    tags = {"role": "campaign", "git_commit": git_commit()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return {**tags, **(extra or {})}


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
        _unusable(params, "create the campaign run", e)
        return None
    _log_params_file(client, run_id)
    return run_id


def _client() -> Any:
    import mlflow

    return _Guarded(mlflow.MlflowClient(tracking_uri=tracking_uri()))


def end_campaign_run(run_id: str | None, status: str = "FINISHED") -> None:
    """Close a parent run opened by `start_campaign_run` (FINISHED, FAILED or KILLED)."""
    if run_id:
        _warn_on_error("close the campaign run", _client().set_terminated, run_id, status)


def tag_run(run_id: str | None, tags: Mapping[str, Any]) -> None:
    """Set tags on a run by id (e.g. the DVC experiment name, known only after `dvc exp run`)."""
    if run_id:
        StageRun(_client(), run_id).set_tags(tags)


def _resolve_parent(client: Any, exp_id: str) -> tuple[str, bool]:
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


def _log_params_file(client: Any, run_id: str) -> None:
    if Path("params.yaml").is_file():
        _warn_on_error("log params.yaml", client.log_artifact, run_id, "params.yaml")


def iteration_step(iteration: str) -> int:
    """`iter_3` → 3: the step of per-iteration metrics; `base` (before warm-up) → -1."""
    return checkpoint_step(iteration)


def flatten(
    tree: Mapping[str, Any], sep: str = ".", prefix: str = "", expand_lists: bool = True
) -> dict[str, Any]:
    """Nested mappings (and lists of mappings, if `expand_lists`) → one level, `sep`-joined keys."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if expand_lists and isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            value = {str(i): v for i, v in enumerate(value)}
        if isinstance(value, Mapping):
            out.update(flatten(value, sep, name + sep, expand_lists))
        else:
            out[name] = value
    return out


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class StageRun:
    """Logging handle for one stage execution; every method is a no-op when tracking is off.

    Logging errors are warnings (counted in `errors`): the outputs matter more than the record.
    """

    def __init__(
        self,
        client: Any = None,
        run_id: str | None = None,
        parent_id: str | None = None,
        log_models: bool = False,
        required: bool = False,
    ) -> None:
        self.client, self.run_id, self.parent_id = client, run_id, parent_id
        self.log_models = log_models
        self.required = required
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self.run_id is not None and not _FAILED

    def _do(self, what: str, method: str, *args: Any, **kwargs: Any) -> None:
        """Call `self.client.<method>` if tracking is on; count (and warn about) a failure.

        When the store itself fails, tracking stops for good; with `tracking.required` that
        fails the stage (TrackingError), else the stage goes on untracked.
        """
        if not self.enabled:
            return
        if not _warn_on_error(what, getattr(self.client, method), *args, **kwargs):
            self.errors += 1
            if self.required and _FAILED:
                raise TrackingError(
                    f"MLflow tracking store {tracking_uri()} failed during the stage: "
                    f"{_FAILED[0]}. The stage stops (tracking.required: true); restart the "
                    "store, or set `tracking.required: false` to go on untracked when it fails."
                )

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params, flattened to dotted keys."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        flat = [
            Param(k, json.dumps(v) if isinstance(v, list) else str(v)[:6000])
            for k, v in flatten(params).items()
        ]
        for chunk in _chunks(flat, 100):
            self._do("log params", "log_batch", self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self._do(f"set tag {k}", "set_tag", self.run_id, k, str(v))

    def log_metrics(
        self, metrics: Mapping[str, Any], step: int | None = None, run_id: str | None = None
    ) -> None:
        """Log the numbers of a (nested) dict as `a/b` keys; lists, strings, None are skipped."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        flat = [
            Metric(k, float(v), now, step or 0)
            for k, v in flatten(metrics, sep="/", expand_lists=False).items()
            if isinstance(v, int | float)
        ]
        for chunk in _chunks(flat, 1000):
            self._do("log metrics", "log_batch", run_id or self.run_id, metrics=chunk)

    def log_history(self, rows: list[Mapping[str, Any]], step_key: str = "step") -> None:
        """Log a series (e.g. a loss history), each row at its own `step_key` step."""
        for i, row in enumerate(rows):
            step = row.get(step_key, i)
            self.log_metrics({k: v for k, v in row.items() if k != step_key}, step=int(step))

    def log_iteration_metrics(self, iteration: str, metrics: Mapping[str, Any]) -> None:
        """Log on this run and on the parent with step = iteration number (the EM curve)."""
        step = iteration_step(iteration)
        self.log_metrics(metrics, step=step)
        if self.parent_id:
            self.log_metrics(metrics, step=step, run_id=self.parent_id)

    def _missing(self, path: str | os.PathLike) -> bool:
        """A local mistake, not a store failure: warn and count, leave tracking on."""
        if self.enabled and not os.path.exists(path):
            log.warning("MLflow: could not log %s: no such file or directory", path)
            self.errors += 1
            return True
        return False

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self._missing(path):
            self._do(f"log {path}", "log_artifact", self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self._missing(directory):
            self._do(
                f"log {directory}",
                "log_artifacts",
                self.run_id,
                str(directory),
                artifact_path,
            )

    def log_text(self, text: str, artifact_file: str) -> None:
        """Save `text` as an artifact (e.g. a sample of trajectories) without a local file."""
        self._do(f"log {artifact_file}", "log_text", self.run_id, text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Save a JSON-able object (e.g. a few sample trajectories) as a JSON/YAML artifact."""
        self._do(f"log {artifact_file}", "log_dict", self.run_id, obj, artifact_file)

    def log_model_dir(self, path: str | os.PathLike, artifact_path: str = "model") -> None:
        """Upload a model directory if `tracking.log_models` (weights are large); tag its path."""
        self.set_tags({"model_dir": str(path)})
        if self.log_models:
            self.log_artifacts(path, artifact_path)


def record_lock_hashes(parent_id: str | None, lock_file: str | os.PathLike = "dvc.lock") -> int:
    """Tag the finished stage runs under `parent_id` with their outs' md5 from dvc.lock.

    DVC writes a stage's hashes only after the stage exits, so a stage cannot log its own:
    the flow calls this after each stage, `exsearch repro` at the end, and each stage at its
    start (catching up on the ones before it). Returns how many runs were tagged.
    """
    if not parent_id or not tracking_enabled():
        return 0
    client, tagged, seen = _client(), 0, set()
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
        parent_id, owned = _resolve_parent(client, exp_id)
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
        run_id = client.create_run(
            client.get_run(parent_id).info.experiment_id,
            run_name="/".join(filter(None, [iteration, stage])),
            tags={k: v for k, v in tags.items() if v},
        ).info.run_id
    except TrackingError:
        raise
    except Exception as e:
        _unusable(params, f"open the run of stage {stage}", e.__cause__ or e)
        return StageRun(), False
    run = StageRun(client, run_id, parent_id, params.tracking.log_models, params.tracking.required)
    run.log_params({s: getattr(params, s).model_dump(mode="json") for s in sections})
    record_lock_hashes(parent_id)
    if store_failed():  # the store failed while the run was being set up
        _unusable(params, f"set up the run of stage {stage}", StoreDown(store_failed()))
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
    and propagates. Exits with the TrackingError message, before the block runs, if the store
    is unusable and tracking is required.
    """
    try:
        run, owned = _open_stage_run(params, stage, iteration, sections)
    except TrackingError as e:  # a stage is a CLI: the message, not a traceback
        fail(e)
    _ACTIVE.append(run)
    if not run.enabled:
        try:
            yield run
        finally:
            _ACTIVE.pop()
        return

    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    _warn_on_error("activate the run", mlflow.start_run, run_id=run.run_id)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except TrackingError as e:  # the store failed mid-stage and tracking is required
        fail(e)
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


def _close(run: StageRun, owned: bool, status: str) -> None:
    """End the stage run (MLflow's active run) with `status`; an owned parent follows it."""
    import mlflow

    active = mlflow.active_run()
    if active and active.info.run_id == run.run_id:
        if _FAILED:
            # MLflow would end its active run at exit anyway; end it now, for one more
            # bounded call at most (it leaves the active run whatever the store says).
            with contextlib.suppress(Exception):
                mlflow.end_run(status=status)
        else:
            _warn_on_error("close the stage run", mlflow.end_run, status=status)
    else:
        _warn_on_error("close the stage run", run.client.set_terminated, run.run_id, status)
    if owned:
        _warn_on_error("close the campaign run", run.client.set_terminated, run.parent_id, status)


def log_iteration_metrics(params: Params, iteration: str, metrics: Mapping[str, Any]) -> None:
    """Log one iteration's evaluation metrics on the stage run and, with step k, on the parent.

    Call inside `stage_run` (the evaluate stage); `params` keeps the call shape uniform, the
    enclosing `stage_run` decides where the metrics go. Nested dicts become `a/b` keys.
    """
    del params
    if not _ACTIVE:
        raise RuntimeError("log_iteration_metrics must be called inside `with stage_run(...)`")
    _ACTIVE[-1].log_iteration_metrics(iteration, metrics)
