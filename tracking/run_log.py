"""`StageRun`: what is logged onto one MLflow run (params, tags, metrics, artifacts, models).

A handle, not a run's lifetime: `tracking.stage` opens and closes stage runs, `tracking.campaign`
the parent; both log through this. Every call goes through the store's guard, so a failing store
costs one bounded call (see `tracking.store`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from exsearch.config import checkpoint_step
from tracking.store import TrackingError, store_failed, tracking_uri, warn_on_error

log = logging.getLogger(__name__)


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
        return self.run_id is not None and store_failed() is None

    def _do(self, what: str, method: str, *args: Any, **kwargs: Any) -> None:
        """Call `self.client.<method>` if tracking is on; count (and warn about) a failure.

        When the store itself fails, tracking stops for good; with `tracking.required` that
        fails the stage (TrackingError), else the stage goes on untracked.
        """
        if not self.enabled:
            return
        if not warn_on_error(what, getattr(self.client, method), *args, **kwargs):
            self.errors += 1
            if self.required and (why := store_failed()):
                raise TrackingError(
                    f"MLflow tracking store {tracking_uri()} failed during the stage: "
                    f"{why}. The stage stops (tracking.required: true); restart the "
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
