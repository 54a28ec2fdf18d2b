"""tracking/: parent/nested runs, tags, per-iteration metrics, failures, stores."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from failing_server import BrokenTrackingServer
from servers import free_port, stop, wait_for
from toy_project import OUTER_VARS, mlflow_store, offline_env

import tracking
from exsearch.config.params import load_params
from tracking import (
    PARENT_ENV,
    TrackingError,
    end_campaign_run,
    log_iteration_metrics,
    record_lock_hashes,
    stage_run,
    start_campaign_run,
)
from tracking.run_log import file_md5
from tracking.stage import system_metrics_on
from tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

PARAMS = """\
prepare:
  train: []
  dev: []
train:
  learning_rate: 2.0e-4
tracking:
  experiment: unit
  required: {required}
  log_models: {log_models}
  system_metrics: {system_metrics}
"""


def write_params(
    root: Path, required: bool = True, log_models: bool = False, system_metrics: str = "auto"
):
    (root / "params.yaml").write_text(
        PARAMS.format(
            required=str(required).lower(),
            log_models=str(log_models).lower(),
            system_metrics=system_metrics,
        )
    )
    return load_params(root / "params.yaml")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A cwd with params.yaml and a fresh MLflow store; no parent id, DVC or switch in the env."""
    monkeypatch.chdir(tmp_path)
    for name in OUTER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(tmp_path / "mlflow.db"))
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def client():
    return mlflow.MlflowClient(tracking.tracking_uri())


def runs(experiment="unit"):
    c = client()
    return c.search_runs([c.get_experiment_by_name(experiment).experiment_id])


def test_stage_run_nests_under_the_parent_named_in_the_env(project, monkeypatch):
    params = write_params(project)
    parent = start_campaign_run(params, "campaign test")
    monkeypatch.setenv(PARENT_ENV, parent)
    with stage_run(params, stage="train", iteration="iter_2") as run:
        run.log_metrics({"loss": 0.5, "note": "skipped"}, step=3)
        mlflow.log_metric("from_fluent", 1.0)  # the stage run is MLflow's active run
    stage = client().get_run(run.run_id)
    tags = stage.data.tags
    assert stage.info.run_name == "iter_2/train"
    assert stage.info.status == "FINISHED"
    assert tags["mlflow.parentRunId"] == parent
    assert (tags["stage"], tags["iteration"], tags["dvc_stage"]) == (
        "train",
        "iter_2",
        "train@iter_2",
    )
    assert tags["params_hash"] == params.section_hash("train")
    assert stage.data.params["train.learning_rate"] == "0.0002"
    assert set(stage.data.metrics) == {"loss", "from_fluent"}
    assert [m.step for m in client().get_metric_history(run.run_id, "loss")] == [3]
    assert client().get_run(parent).info.status == "RUNNING"  # the flow owns its parent
    end_campaign_run(parent, "FINISHED")
    assert client().get_run(parent).info.status == "FINISHED"
    assert [a.path for a in client().list_artifacts(parent)] == ["params.yaml"]
    assert (project / "mlruns").is_dir()  # artifacts live beside the store


def test_relative_sqlite_store_is_resolved_against_the_dvc_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "workspace"))  # e.g. `dvc exp run --temp`
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'workspace' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_stages_without_parent_share_one_auto_parent_per_campaign_key(project):
    params = write_params(project)
    with stage_run(params, stage="prepare") as first:
        pass
    with stage_run(params, stage="index") as second:
        pass
    assert first.parent_id == second.parent_id
    parent = client().get_run(first.parent_id)
    assert parent.data.tags["role"] == "campaign"
    assert parent.info.status == "FINISHED"
    assert [a.path for a in client().list_artifacts(first.parent_id)] == ["params.yaml"]
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "seed: 3\n")
    with stage_run(load_params(), stage="prepare") as third:
        pass
    assert third.parent_id != first.parent_id  # other params, other campaign


def test_iteration_metrics_land_on_the_parent_with_the_iteration_as_step(project):
    params = write_params(project)
    for it, em in [("iter_0", 0.1), ("iter_1", 0.2), ("iter_2", 0.4)]:
        with stage_run(params, stage="evaluate", iteration=it) as run:
            log_iteration_metrics(params, it, {"overall": {"em": em}, "count": 5, "tag": "x"})
    history = client().get_metric_history(run.parent_id, "overall/em")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.1), (1, 0.2), (2, 0.4)]
    assert client().get_run(run.run_id).data.metrics == {"overall/em": 0.4, "count": 5.0}


def test_failing_stage_marks_its_run_and_auto_parent_failed_and_propagates(project):
    params = write_params(project)
    with (
        pytest.raises(ValueError),
        stage_run(params, stage="train", iteration="iter_1") as run,
    ):
        raise ValueError("bad record 7")
    failed = client().get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"] == "ValueError: bad record 7"
    assert client().get_run(run.parent_id).info.status == "FAILED"
    with pytest.raises(SystemExit), stage_run(params, stage="index") as ok:
        sys.exit(0)
    assert client().get_run(ok.run_id).info.status == "FINISHED"


def test_unreachable_required_store_fails_before_the_stage_runs(project, monkeypatch):
    params = write_params(project, required=True)
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ran = []
    with pytest.raises(TrackingError, match="127.0.0.1") as err:
        with stage_run(params, stage="prepare"):
            ran.append(True)
    assert not ran
    assert "tracking.required: false" in str(err.value)
    with pytest.raises(TrackingError, match="127.0.0.1"):
        start_campaign_run(params)


def test_unreachable_optional_store_runs_the_stage_untracked(project, monkeypatch):
    params = write_params(project, required=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with stage_run(params, stage="prepare") as run:
        (project / "out.txt").write_text("done")
        run.log_metrics({"n": 1})
        log_iteration_metrics(params, "iter_1", {"em": 1.0})
    assert not run.enabled
    assert (project / "out.txt").read_text() == "done"


def test_logging_error_after_the_work_is_a_warning_not_a_failure(project, caplog):
    params = write_params(project)
    with stage_run(params, stage="prepare") as run:
        (project / "out.txt").write_text("done")
        run.log_artifact(project / "missing.json")
    assert run.errors == 1
    assert "could not log" in caplog.text
    assert client().get_run(run.run_id).info.status == "FINISHED"
    assert (project / "out.txt").read_text() == "done"


@pytest.mark.parametrize("log_models", [False, True])
def test_a_checkpoint_is_a_logged_model_its_weights_uploaded_only_with_log_models(
    project, log_models
):
    params = write_params(project, log_models=log_models)
    model = project / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with stage_run(params, stage="train", iteration="iter_1") as run:
        model_id = run.log_checkpoint("iter_1", model)
    logged = client().get_logged_model(model_id)
    assert (logged.name, logged.source_run_id, str(logged.status)) == (
        "iter_1",
        run.run_id,
        "READY",
    )
    assert logged.tags["model_dir"] == str(model)
    assert logged.tags["campaign"] == run.parent_id
    uploaded = [a.path for a in client().list_logged_model_artifacts(model_id)]
    assert uploaded == (["config.json"] if log_models else [])
    assert client().get_run(run.run_id).data.tags["model_dir"] == str(model)


def test_the_evaluate_run_links_its_metrics_to_the_checkpoint_and_the_dev_set(project):
    params = write_params(project)
    (project / "dev.jsonl").write_text('{"id": "q1"}\n')
    with stage_run(params, stage="train", iteration="iter_1") as train:
        trained = train.log_checkpoint("iter_1", project)
    with stage_run(params, stage="evaluate", iteration="iter_1") as run:
        dev = run.log_dataset(project / "dev.jsonl", "dev", "evaluation")
        model_id = run.checkpoint_model("iter_1", project)
        log_iteration_metrics(params, "iter_1", {"overall": {"f1": 0.4}}, model_id, dev)
    assert model_id == trained  # the model the train stage of this campaign recorded
    (metric,) = client().get_logged_model(model_id).metrics
    assert (metric.key, metric.value, metric.run_id) == ("overall/f1", 0.4, run.run_id)
    assert (metric.dataset_name, metric.dataset_digest) == ("dev", dev.digest)
    (used,) = client().get_run(run.run_id).inputs.dataset_inputs
    assert (used.dataset.name, used.dataset.digest) == ("dev", file_md5(project / "dev.jsonl"))
    assert dev.digest == hashlib.md5(b'{"id": "q1"}\n').hexdigest()  # as DVC hashes a file
    assert [t.value for t in used.tags if t.key == "mlflow.data.context"] == ["evaluation"]


def test_a_checkpoint_scored_in_a_campaign_that_did_not_make_it_is_recorded_there(project):
    params = write_params(project)
    with stage_run(params, stage="evaluate", iteration="base") as run:
        model_id = run.checkpoint_model("base", project)
    logged = client().get_logged_model(model_id)
    assert (logged.name, logged.source_run_id) == ("base", run.run_id)


def test_the_m_step_loss_is_logged_at_each_step_as_the_trainer_logs_it(project):
    from tracking.trainer_log import LiveMetrics

    params = write_params(project)
    with stage_run(params, stage="train", iteration="iter_1") as run:
        live = LiveMetrics(run)
        for step, loss in ((1, 2.0), (2, 1.5)):
            state = SimpleNamespace(global_step=step, is_world_process_zero=True)
            live.on_log(None, state, None, logs={"loss": loss, "learning_rate": 0.1})
        other_rank = SimpleNamespace(global_step=2, is_world_process_zero=False)
        live.on_log(None, other_rank, None, logs={"loss": 9.0})
        end = SimpleNamespace(global_step=2, is_world_process_zero=True)
        live.on_log(None, end, None, logs={"train_loss": 1.7, "train_runtime": 3.0})
    steps = [(m.step, m.value) for m in client().get_metric_history(run.run_id, "loss")]
    assert sorted(steps) == [(1, 2.0), (2, 1.5)]
    assert "train_runtime" not in client().get_run(run.run_id).data.metrics


def test_predictions_are_logged_as_a_table(project):
    params = write_params(project)
    rows = [{"qid": "q1", "prediction": "Paris", "f1": 1.0}]
    with stage_run(params, stage="evaluate", iteration="iter_1") as run:
        run.log_table(rows, "predictions_table.json")
    (table,) = client().list_artifacts(run.run_id)
    logged = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.run_id, artifact_path=table.path, tracking_uri=tracking.tracking_uri()
            )
        ).read_text()
    )
    assert logged["columns"] == ["qid", "prediction", "f1"]
    assert logged["data"] == [["q1", "Paris", 1.0]]


def test_system_metrics_are_sampled_onto_a_run_with_a_local_store(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    params = write_params(project)
    with stage_run(params, stage="train", iteration="iter_1") as run:
        time.sleep(1.0)
    metrics = client().get_run(run.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


@pytest.mark.parametrize(
    ("setting", "uri", "on"),
    [
        ("auto", "sqlite:///mlflow.db", True),
        # a server's samples would go out from MLflow's own thread, which the bounded cost
        # of a failing server does not cover
        ("auto", "http://127.0.0.1:5001", False),
        ("true", "http://127.0.0.1:5001", True),
        ("false", "sqlite:///mlflow.db", False),
    ],
)
def test_system_metrics_follow_the_setting_auto_only_with_a_local_store(
    project, monkeypatch, setting, uri, on
):
    params = write_params(project, system_metrics=setting)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert system_metrics_on(params) is on


def test_iteration_metrics_outside_a_stage_run_are_an_error(project):
    with pytest.raises(RuntimeError, match="inside"):
        log_iteration_metrics(write_params(project), "iter_1", {"em": 1.0})


def test_finished_stage_runs_get_their_outs_hashes_from_dvc_lock(project):
    params = write_params(project)
    with stage_run(params, stage="prepare") as run:
        pass
    lock = {
        "schema": "2.0",
        "stages": {"prepare": {"outs": [{"path": "data/x.jsonl", "md5": "ab"}]}},
    }
    (project / "dvc.lock").write_text(json.dumps(lock))
    assert record_lock_hashes(run.parent_id) == 1
    tags = client().get_run(run.run_id).data.tags
    assert tags["dvc.out.data/x.jsonl"] == "ab"
    assert record_lock_hashes(run.parent_id) == 0  # already recorded


def test_tracking_switched_off_touches_no_store(project, monkeypatch):
    monkeypatch.setenv(tracking.SWITCH_ENV, "off")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'never.db'}")
    params = write_params(project)
    assert start_campaign_run(params) is None
    with stage_run(params, stage="evaluate", iteration="iter_1") as run:
        run.log_params({"a": 1})
        run.log_metrics({"a": 1})
        run.set_tags({"a": 1})
        run.log_artifact(project / "params.yaml")
        run.log_artifacts(project)
        run.log_text("x", "x.txt")
        run.log_checkpoint("iter_1", project)
        run.log_dataset(project / "params.yaml", "dev", "evaluation")
        run.log_table([{"a": 1}], "t.json")
        assert run.checkpoint_model("iter_1", project) is None
        log_iteration_metrics(params, "iter_1", {"em": 1.0})
    assert not run.enabled and run.errors == 0
    assert not (project / "never.db").exists()


def test_iteration_step_reads_the_iteration_number():
    assert [tracking.iteration_step(i) for i in ("base", "iter_0", "iter_12")] == [-1, 0, 12]
    with pytest.raises(ValueError, match="not a checkpoint name"):
        tracking.iteration_step("final")


@pytest.mark.slow
def test_runs_logged_to_an_mlflow_server_are_read_back_over_http(project, monkeypatch):
    port = free_port()
    db = mlflow_store(project / "server.db")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            db,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=project,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{uri}/health", server, 120)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        params = write_params(project)
        (project / "metrics.json").write_text('{"em": 0.5}')
        with stage_run(params, stage="evaluate", iteration="iter_1") as run:
            log_iteration_metrics(params, "iter_1", {"overall": {"em": 0.5}})
            run.log_artifact(project / "metrics.json")
        request = urllib.request.Request(
            f"{uri}/api/2.0/mlflow/runs/search",
            data=json.dumps(
                {"experiment_ids": [client().get_run(run.run_id).info.experiment_id]}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            found = json.load(response)["runs"]
        names = sorted(r["info"]["run_name"] for r in found)
        assert names[0] == "iter_1/evaluate" and names[1].startswith("repro ")
        assert [a.path for a in client().list_artifacts(run.run_id)] == ["metrics.json"]
    finally:
        stop(server)


# ---- bounded cost: a broken or vanished server --------------------------------------------------


def test_a_server_that_answers_health_but_fails_the_api_stops_a_required_stage_before_work(
    project, monkeypatch
):
    params = write_params(project, required=True)
    ran = []
    with BrokenTrackingServer() as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        with pytest.raises(TrackingError, match="500") as err:
            with stage_run(params, stage="prepare"):
                ran.append(True)
    assert not ran
    assert "tracking.required: false" in str(err.value)
    # One call, tried twice (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1), then nothing more.
    assert 1 <= len(server.api_requests) <= 2


def test_a_server_that_fails_the_api_leaves_an_optional_stage_untracked_after_one_call(
    project, monkeypatch, caplog
):
    params = write_params(project, required=False)
    with BrokenTrackingServer() as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        with stage_run(params, stage="evaluate", iteration="iter_1") as run:
            (project / "out.txt").write_text("done")
            run.log_metrics({"em": 0.5})
            run.log_artifact(project / "out.txt")
            log_iteration_metrics(params, "iter_1", {"em": 0.5})
        assert record_lock_hashes("some-parent") == 0
        assert start_campaign_run(params) is None  # a new campaign probes again, and gives up
    assert not run.enabled and (project / "out.txt").read_text() == "done"
    assert 2 <= len(server.api_requests) <= 4  # two failed calls in all, one per campaign
    assert caplog.text.count("Continuing without tracking") == 2


def mlflow_server(project):
    port = free_port()
    db = mlflow_store(project / "server.db")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            db,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=project,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    wait_for(f"{uri}/health", server, 120)
    return server, uri


class CountingRequests:
    """Counts the HTTP requests MLflow's client sends (each retry included)."""

    def __init__(self, monkeypatch):
        import requests

        self.n = 0
        send = requests.adapters.HTTPAdapter.send

        def counted(adapter, *args, **kwargs):
            self.n += 1
            return send(adapter, *args, **kwargs)

        monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", counted)


@pytest.mark.slow
@pytest.mark.parametrize("required", [False, True])
def test_a_server_that_dies_mid_stage_costs_one_failed_call_then_none(
    project, monkeypatch, caplog, required
):
    params = write_params(project, required=required)
    server, uri = mlflow_server(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    sent = CountingRequests(monkeypatch)
    counts = {}
    try:
        with contextlib.ExitStack() as stack:
            if required:
                stack.enter_context(pytest.raises(TrackingError, match="failed during the stage"))
            with stage_run(params, stage="evaluate", iteration="iter_1") as run:
                run.log_metrics({"before": 1.0})
                assert run.errors == 0
                stop(server, signal.SIGKILL)  # the server dies mid-stage
                counts["before the failure"] = sent.n
                run.log_metrics({"em": 0.5})  # fails: given up on (and, if required, the end)
                counts["after the failure"] = sent.n
                (project / "out.txt").write_text("done")
                run.log_artifact(project / "out.txt")
                run.log_dict({"a": 1}, "a.json")
                log_iteration_metrics(params, "iter_1", {"em": 0.5})
                counts["end of the stage"] = sent.n
    finally:
        stop(server)
    assert not run.enabled
    assert caplog.text.count("No further MLflow calls") == 1
    # The failed call: two attempts (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1); then at most closing
    # MLflow's active run (two more).
    assert sent.n - counts["before the failure"] <= 4
    if required:
        assert "after the failure" not in counts  # the stage stopped at the failed call
    else:
        assert counts["end of the stage"] == counts["after the failure"]  # nothing more was sent
        assert (project / "out.txt").read_text() == "done"


# ---- what the MLflow UI opens --------------------------------------------------------------------


def test_a_new_experiment_opens_in_the_model_training_view(project):
    with stage_run(write_params(project), stage="prepare"):
        pass
    tags = client().get_experiment_by_name("unit").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_existing_experiment_without_a_kind_gets_it(project):
    client().create_experiment("unit")
    assert "mlflow.experimentKind" not in client().get_experiment_by_name("unit").tags
    with stage_run(write_params(project), stage="prepare"):
        pass
    tags = client().get_experiment_by_name("unit").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_kind_someone_chose_is_left_alone(project):
    client().create_experiment("unit", tags={"mlflow.experimentKind": "genai_development"})
    with stage_run(write_params(project), stage="prepare"):
        pass
    tags = client().get_experiment_by_name("unit").tags
    assert tags["mlflow.experimentKind"] == "genai_development"


def test_the_kind_is_one_the_installed_mlflow_ui_knows():
    from importlib.resources import files

    js = files("mlflow") / "server" / "js" / "build" / "static" / "js"
    sources = "".join(p.read_text(errors="ignore") for p in js.iterdir() if p.name.endswith(".js"))
    assert f'CUSTOM_MODEL_DEVELOPMENT="{EXPERIMENT_KIND}"' in sources
    assert f'"{EXPERIMENT_KIND_TAG}"' in sources


def test_dvc_rewriting_its_lock_neither_dirties_the_commit_nor_splits_the_campaign(tmp_path):
    from tracking.provenance import campaign_key, git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "stage.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    with contextlib.chdir(tmp_path):
        key = campaign_key()
        (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
        assert git_commit() == clean and not clean.endswith("-dirty")
        assert campaign_key() == key
        (tmp_path / "stage.py").write_text("x = 2\n")  # a code change still shows
        assert git_commit() == clean + "-dirty"
        assert campaign_key() != key
