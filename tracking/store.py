"""The MLflow store: where runs go, opening it, and a bounded cost when it fails.

Where runs go: `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the working directory (the
project root under DVC), experiment `params.tracking.experiment`. `EXSEARCH_TRACKING=off` turns
tracking off (tests, quick trials).

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

import logging
import os
import urllib.request
from pathlib import Path
from typing import Any

from exsearch.config import Params

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


def unusable(params: Params, what: str, err: Exception) -> None:
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
        unusable(params, "use the store again after an earlier failure", StoreDown(why))
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
        unusable(params, "open the experiment", e.__cause__ or e)
        return None


def open_client() -> Any:
    """A guarded client of the store, for calls on runs that already exist (by id)."""
    import mlflow

    return _Guarded(mlflow.MlflowClient(tracking_uri=tracking_uri()))


def warn_on_error(what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
    """Call the store; False (with a warning, once per failed store) if it did not work."""
    try:
        _call(what, fn, *args, **kwargs)
        return True
    except StoreDown:
        return False  # warned once, when the store failed
    except Exception as e:
        log.warning("MLflow: could not %s in %s: %s: %s", what, tracking_uri(), type(e).__name__, e)
        return False
