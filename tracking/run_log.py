"""`StageRun`: what is logged onto one MLflow run (params, tags, metrics, artifacts, models).

Besides a run's own params, metrics and files, MLflow 3's records of what a run used and made:
the data files it read as dataset inputs (digest: the md5 DVC gives the file), each checkpoint
as a LoggedModel (the Models tab; the evaluate run's metrics linked to it), predictions as a
table (the Evaluation view), and the M-step's loss as it is logged (`tracking.trainer_log`).

A handle, not a run's lifetime: `tracking.stage` opens and closes stage runs, `tracking.campaign`
the parent; both log through this. Every call goes through the store's guard, so a failing store
costs one bounded call (see `tracking.store`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exsearch.config import checkpoint_step
from tracking.store import TrackingError, store_failed, tracking_uri, warn_on_error

log = logging.getLogger(__name__)


def iteration_step(iteration: str) -> int:
    """`iter_3` → 3: the step of per-iteration metrics; `base` (before warm-up) → -1."""
    return checkpoint_step(iteration)


def checkpoint_name(iteration: str, family: str | None = None) -> str:
    """The LoggedModel name of a checkpoint: `iter_2`, or `rag_sft-iter_2` for another chain's.

    The other chain's checkpoints live in models/rag_sft/iter_2; MLflow refuses '/' in a name.
    """
    return f"{family}-{iteration}" if family else iteration


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


@dataclass(frozen=True)
class DatasetRef:
    """A dataset input as metrics name it: MLflow links a metric to (name, digest)."""

    name: str
    digest: str


def file_md5(path: str | os.PathLike) -> str:
    """The md5 of a file's bytes: the hash DVC records for it in dvc.lock."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


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
        experiment_id: str | None = None,
    ) -> None:
        self.client, self.run_id, self.parent_id = client, run_id, parent_id
        self.log_models = log_models
        self.required = required
        self.experiment_id = experiment_id
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self.run_id is not None and store_failed() is None

    def _do(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """`self.client.<method>(...)`'s answer if tracking is on; count (and warn about) a failure.

        Returns None when untracked or when the call failed. When the store itself fails,
        tracking stops for good; with `tracking.required` that fails the stage (TrackingError),
        else the stage goes on untracked.
        """
        if not self.enabled:
            return None
        answer: list[Any] = []

        def call(*a: Any, **kw: Any) -> None:
            answer.append(getattr(self.client, method)(*a, **kw))

        if not warn_on_error(what, call, *args, **kwargs):
            self.errors += 1
            if self.required and (why := store_failed()):
                raise TrackingError(
                    f"MLflow tracking store {tracking_uri()} failed during the stage: "
                    f"{why}. The stage stops (tracking.required: true); restart the "
                    "store, or set `tracking.required: false` to go on untracked when it fails."
                )
        return answer[0] if answer else None

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
        self,
        metrics: Mapping[str, Any],
        step: int | None = None,
        run_id: str | None = None,
        model_id: str | None = None,
        dataset: DatasetRef | None = None,
    ) -> None:
        """Log the numbers of a (nested) dict as `a/b` keys; lists, strings, None are skipped.

        `model_id` and `dataset` link each metric to the LoggedModel it scores and the dataset
        input it was measured on (MLflow 3 shows them on the model's page).
        """
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        links = {"model_id": model_id}
        if dataset is not None:
            links |= {"dataset_name": dataset.name, "dataset_digest": dataset.digest}
        flat = [
            Metric(k, float(v), now, step or 0, **links)
            for k, v in flatten(metrics, sep="/", expand_lists=False).items()
            if isinstance(v, int | float)
        ]
        for chunk in _chunks(flat, 1000):
            self._do("log metrics", "log_batch", run_id or self.run_id, metrics=chunk)

    def log_iteration_metrics(
        self,
        iteration: str,
        metrics: Mapping[str, Any],
        model_id: str | None = None,
        dataset: DatasetRef | None = None,
    ) -> None:
        """Log on this run and on the parent with step = iteration number (the EM curve).

        On this run the metrics are linked to the checkpoint's `model_id` and the `dataset`.
        """
        step = iteration_step(iteration)
        self.log_metrics(metrics, step=step, model_id=model_id, dataset=dataset)
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

    def log_table(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> None:
        """Save rows as an MLflow table (a JSON artifact the UI shows as a table)."""
        if not self.enabled:
            return
        import pandas as pd

        self._do(
            f"log {artifact_file}",
            "log_table",
            self.run_id,
            data=pd.DataFrame(list(rows)),
            artifact_file=artifact_file,
        )

    def log_dataset(self, path: str | os.PathLike, name: str, context: str) -> DatasetRef | None:
        """Record the file at `path` as a dataset input of this run, its digest DVC's md5.

        `context`: training or evaluation. Returns the reference that links metrics to it, or
        None when untracked or the file is missing.
        """
        if not self.enabled or self._missing(path):
            return None
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        ref = DatasetRef(name, file_md5(path))
        source = resolve_dataset_source(os.path.abspath(path))
        entity = MetaDataset(source, name=ref.name, digest=ref.digest)._to_mlflow_entity()
        context_tag = InputTag("mlflow.data.context", context)
        dataset = DatasetInput(entity, tags=[context_tag])
        self._do(f"log dataset {path}", "log_inputs", self.run_id, datasets=[dataset])
        return ref

    def log_checkpoint(self, name: str, path: str | os.PathLike) -> str | None:
        """Record the checkpoint at `path` as an MLflow LoggedModel named `name` (Models tab).

        The weights stay where DVC keeps them: the model names their folder (tag `model_dir`)
        and gets them uploaded only with `tracking.log_models` (they are large). The model is
        tagged with the campaign (the parent run), so the evaluate stage finds it to link its
        metrics (`checkpoint_model`). Returns the model's id, None when untracked.
        """
        self.set_tags({"model_dir": str(path)})
        model_id = self._new_model(name, path)
        if model_id and self.log_models and not self._missing(path):
            self._do(f"upload {path}", "log_model_artifacts", model_id, str(path))
        return model_id

    def checkpoint_model(self, name: str, path: str | os.PathLike) -> str | None:
        """The LoggedModel of checkpoint `name` in this campaign; None when untracked.

        The stage that wrote the checkpoint recorded it; if that stage was not tracked in this
        campaign (a checkpoint made before, only scored now), it is recorded from this run.
        """
        if not self.enabled:
            return None
        found = self._do(
            f"find the model {name}",
            "search_logged_models",
            [self.experiment_id],
            filter_string=f"name = '{name}' AND tags.campaign = '{self.parent_id}'",
            max_results=1,
        )
        return found[0].model_id if found else self._new_model(name, path)

    def _new_model(self, name: str, path: str | os.PathLike) -> str | None:
        tags = {"model_dir": str(path), "campaign": self.parent_id or ""}
        model = self._do(
            f"record the model {name}",
            "create_logged_model",
            self.experiment_id,
            name=name,
            source_run_id=self.run_id,
            tags=tags,
        )
        if model is None:
            return None
        self._do(f"finalize the model {name}", "finalize_logged_model", model.model_id, "READY")
        return model.model_id
