"""flows/: DAG from DVC, the Prefect campaign flow over a toy DVC project, the schedule."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from dvc.lock import make_lock
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.states import Failed
from prefect.testing.utilities import prefect_test_harness
from servers import free_port, stop, wait_for
from toy_project import OUTER_VARS, make_toy_project, offline_env

from exsearch.config.params import load_params
from flows import campaign
from flows.campaign import (
    DvcBusy,
    StageFailed,
    checkpoint_summary,
    em_campaign,
    extend_iterations,
)
from flows.dag import read_stages, select

ORDER = ["prepare", "train@iter_1", "evaluate@iter_1", "train@iter_2", "evaluate@iter_2"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """A temporary Prefect API for the module, its home in a temp dir."""
    with temporary_settings({PREFECT_HOME: str(tmp_path_factory.mktemp("prefect"))}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture
def env(monkeypatch):
    """Offline, telemetry-free environment inherited by the DVC and stage subprocesses."""
    for key, value in offline_env().items():
        monkeypatch.setenv(key, value)
    for key in OUTER_VARS:
        monkeypatch.delenv(key, raising=False)


def runs_of(root: Path, experiment: str = "toy") -> list:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def outputs(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in sorted((root / "runs").rglob("*"))
        if p.is_file() and p.name != ".gitignore"
    }


def lock_hashes(root: Path) -> dict[str, list]:
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: [(o["path"], o["md5"]) for o in s.get("outs", [])] for name, s in stages.items()}


def test_stage_order_and_iteration_filter_come_from_dvc(tmp_path):
    root = make_toy_project(tmp_path / "toy", commit=False, store=False)
    stages = read_stages(root)
    assert [s.address for s in stages] == ORDER
    assert stages[3].upstream == ("train@iter_1",)
    assert [s.address for s in select(stages, ["iter_1"])] == ORDER[:3]
    with pytest.raises(ValueError, match="iter_9"):
        select(stages, ["iter_9"])


def test_extend_appends_the_next_iteration_and_keeps_comments(tmp_path):
    root = make_toy_project(tmp_path / "toy", commit=False, store=False)
    before = (root / "params.yaml").read_text().splitlines()
    assert extend_iterations(root / "params.yaml") == "iter_3"
    after = (root / "params.yaml").read_text().splitlines()
    assert [line for line in after if line not in before] == [
        "    iter_3:",
        "      prev: iter_2",
        "    - iter_3",
    ]
    assert set(before) <= set(after)  # comments, nulls and layout kept
    em = load_params(root / "params.yaml").em
    assert em.iters["iter_3"].prev == "iter_2"
    assert em.evaluate[-1] == "iter_3"
    assert [s.address for s in read_stages(root)][-2:] == ["train@iter_3", "evaluate@iter_3"]


def test_summary_takes_the_overall_numbers_of_every_checkpoint(tmp_path):
    for name, doc in {
        "iter_1": {"overall": {"em": 0.2, "note": "x"}, "by_dataset": {"a": {"em": 1}}},
        "base": {"em": 0.1},
        "iter_0": "not json",
    }.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        text = doc if isinstance(doc, str) else json.dumps(doc)
        (tmp_path / "runs" / name / "metrics.json").write_text(text)
    assert checkpoint_summary(tmp_path) == [
        {"checkpoint": "base", "em": 0.1},
        {"checkpoint": "iter_1", "em": 0.2},
    ]


def test_only_a_busy_dvc_lock_is_retried(tmp_path):
    def fail_with(message: str) -> Exception:
        code = f"print({message!r}); raise SystemExit(1)"
        with pytest.raises((DvcBusy, StageFailed)) as err:
            campaign.stream([sys.executable, "-c", code], tmp_path, dict(os.environ), print)
        return err.value

    busy = fail_with("ERROR: Unable to acquire lock. Most likely another DVC process is running")
    broken = fail_with("ERROR: failed to reproduce 'train@iter_1'")
    assert isinstance(busy, DvcBusy) and isinstance(broken, StageFailed)
    assert campaign._only_transient(None, None, Failed(data=busy))
    assert not campaign._only_transient(None, None, Failed(data=broken))


@pytest.mark.slow
def test_dry_run_lists_the_stale_stages_and_runs_nothing(tmp_path, env, harness):
    root = make_toy_project(tmp_path / "toy")
    assert em_campaign(dry_run=True, project_dir=str(root)) == {"would_run": ORDER}
    assert not (root / "runs").exists() and not (root / "executions.log").exists()


@pytest.mark.slow
def test_flow_runs_every_stage_in_dag_order_like_dvc_repro(tmp_path, env, harness):
    flow_root = make_toy_project(tmp_path / "flow")
    repro_root = make_toy_project(tmp_path / "repro")

    # Plain `dvc repro` of an identical copy, meanwhile (another repo, so no lock contention).
    repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repro_root)
    result = em_campaign(project_dir=str(flow_root))
    assert repro.wait() == 0

    assert result["stages"] == dict.fromkeys(ORDER, "ran")
    assert (flow_root / "executions.log").read_text().split() == ORDER
    assert outputs(flow_root) == outputs(repro_root)
    assert lock_hashes(flow_root) == lock_hashes(repro_root)
    assert [r["checkpoint"] for r in result["summary"]] == ["iter_1", "iter_2"]

    runs = runs_of(flow_root)
    parents = [r for r in runs if r.data.tags.get("role") == "campaign"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == result["parent_run_id"]
    assert parent.info.status == "FINISHED"
    nested = {r.info.run_name: r for r in runs if r is not parent}
    assert set(nested) == {
        "prepare",
        "iter_1/train",
        "iter_1/evaluate",
        "iter_2/train",
        "iter_2/evaluate",
    }
    for run in nested.values():
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["git_commit"] == parent.data.tags["git_commit"] != ""
        assert tags["dvc.outs_recorded"] == "true"
        assert run.info.status == "FINISHED"
    out_hash = dict(lock_hashes(flow_root)["train@iter_2"])["runs/iter_2/model.txt"]
    assert nested["iter_2/train"].data.tags["dvc.out.runs/iter_2/model.txt"] == out_hash
    assert nested["prepare"].data.tags["params_hash"] == load_params(
        flow_root / "params.yaml"
    ).section_hash("prepare")
    client = mlflow.MlflowClient(f"sqlite:///{flow_root / 'mlflow.db'}")
    curve = client.get_metric_history(parent.info.run_id, "overall/em")
    assert sorted((m.step, m.value) for m in curve) == [(1, 0.2), (2, 0.3)]
    assert [a.path for a in client.list_artifacts(nested["iter_2/evaluate"].info.run_id)] == [
        "metrics.json"
    ]

    # A bare `dvc repro` groups its stages under one auto-created parent too.
    repro_runs = runs_of(repro_root)
    repro_parents = {r.data.tags.get("mlflow.parentRunId") for r in repro_runs} - {None}
    assert len(repro_runs) == 6 and len(repro_parents) == 1


@pytest.mark.slow
def test_failed_stage_fails_the_flow_and_a_rerun_resumes_there(tmp_path, env, harness, monkeypatch):
    monkeypatch.setenv("EXSEARCH_TRACKING", "off")  # this test is about DVC and Prefect
    root = make_toy_project(tmp_path / "toy")
    (root / "fail_at.txt").write_text("train@iter_2")

    state = em_campaign(project_dir=str(root), return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed, match="train@iter_2"):
        state.result()
    assert (root / "executions.log").read_text().split() == ORDER[:4]  # no retry of a real error
    assert set(lock_hashes(root)) == set(ORDER[:3])
    assert (root / "runs/iter_1/model.txt").read_text() == "2\n"
    assert not (root / "runs/iter_2/model.txt").exists()

    (root / "fail_at.txt").unlink()
    result = em_campaign(project_dir=str(root))
    assert result["stages"] == {
        **dict.fromkeys(ORDER[:3], "skipped"),
        **dict.fromkeys(ORDER[3:], "ran"),
    }
    assert (root / "executions.log").read_text().split() == ORDER[:4] + ORDER[3:]


@pytest.mark.slow
def test_a_busy_dvc_lock_is_retried_until_it_is_free(tmp_path, env, harness, monkeypatch):
    monkeypatch.setenv("EXSEARCH_TRACKING", "off")
    root = make_toy_project(tmp_path / "toy", store=False)
    (root / ".dvc/tmp").mkdir(exist_ok=True)
    held = make_lock(str(root / ".dvc/tmp/lock"), tmp_dir=str(root / ".dvc/tmp"))
    held.lock()  # as another DVC process would
    busy = []

    class ReleaseWhenRefused(logging.Handler):
        def emit(self, record):
            if "Unable to acquire lock" in record.getMessage() and not busy:
                busy.append(record.getMessage())
                held.unlock()

    handler, logger = ReleaseWhenRefused(), logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    try:
        result = em_campaign(iterations=["iter_1"], project_dir=str(root))
    finally:
        logger.removeHandler(handler)
        if held.is_locked:
            held.unlock()
    assert busy  # the first attempt met the lock …
    assert result["stages"] == dict.fromkeys(ORDER[:3], "ran")  # … and the retry ran the stage


@pytest.mark.slow
def test_overrides_make_a_named_dvc_experiment_tracked_in_mlflow(tmp_path, env, harness):
    root = make_toy_project(tmp_path / "toy")
    result = em_campaign(
        overrides=["seed=5"], exp_name="seed5", iterations=["iter_1"], project_dir=str(root)
    )
    assert result["stages"] == {"exp run": "seed5"}
    assert (root / "runs/iter_1/model.txt").read_text() == "6\n"
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    names = [e["name"] for b in json.loads(shown.stdout) for e in (b.get("experiments") or [])]
    assert "seed5" in names
    runs = runs_of(root)
    assert {r.data.tags.get("dvc_exp") for r in runs} == {"seed5"}
    assert len(runs) == 4  # the campaign and prepare, train@iter_1, evaluate@iter_1


def start_prefect_server(tmp_path: Path) -> tuple[subprocess.Popen, str, dict[str, str]]:
    """A Prefect server on a free 127.0.0.1 port, its home in tmp_path: (process, api, env)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    penv = offline_env(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
        PREFECT_UI_ENABLED="false",
    )
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen(
            [*cmd, "--port", str(port)],
            env=penv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(f"{api}/health", server)
    except BaseException:
        stop(server)
        raise
    return server, api, {**penv, "PREFECT_API_URL": api}


@pytest.mark.slow
def test_served_deployment_gets_scheduled_runs_on_a_prefect_server(tmp_path):
    root = make_toy_project(tmp_path / "toy")
    server, api, penv = start_prefect_server(tmp_path)
    served = None
    try:
        serve_cmd = [
            sys.executable,
            "-m",
            "flows",
            "serve",
            "-C",
            str(root),
            "--cron",
            "0 0 1 1 *",
            "--deployment",
            "yearly",
            "--extend",
        ]
        with (tmp_path / "serve.log").open("w") as log:
            served = subprocess.Popen(
                serve_cmd,
                env=penv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            while True:
                assert served.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "no scheduled run appeared"
                try:
                    deployment = client.read_deployment_by_name("em-campaign/yearly")
                except Exception:  # not registered yet
                    time.sleep(1)
                    continue
                ids = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
                scheduled = [
                    r
                    for r in client.read_flow_runs(deployment_filter=ids)
                    if r.state_type.value == "SCHEDULED"
                ]
                if scheduled:
                    break
                time.sleep(1)
        assert deployment.parameters == {"extend": True, "overrides": [], "project_dir": str(root)}
        assert all(r.expected_start_time.month == 1 for r in scheduled)
    finally:
        if served is not None:
            stop(served, signal.SIGINT)
        stop(server)


@pytest.mark.slow
def test_a_deployment_on_a_work_pool_is_run_by_a_worker_like_a_local_run(tmp_path):
    root = make_toy_project(tmp_path / "toy")
    server, api, penv = start_prefect_server(tmp_path)
    try:
        deploy_cmd = [sys.executable, "-m", "flows", "deploy", "-C", str(root), "--pool", "cpu"]
        done = subprocess.run(
            [*deploy_cmd, "--deployment", "on-demand"], env=penv, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "prefect worker start --pool cpu" in done.stdout
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("em-campaign/on-demand")
            assert deployment.work_pool_name == "cpu"
            assert client.read_work_pool("cpu").type == "process"
            flow_run = client.create_flow_run_from_deployment(deployment.id)
        worker = subprocess.run(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "cpu", "--run-once"],
            env=penv,
            capture_output=True,
            text=True,
            timeout=600,
        )
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run.id).state
        assert state.is_completed(), (state, worker.stdout[-3000:], worker.stderr[-3000:])
        assert json.loads((root / "runs" / "iter_2" / "metrics.json").read_text())["overall"]
        assert (root / "executions.log").read_text().split() == [
            "prepare",
            "train@iter_1",
            "evaluate@iter_1",
            "train@iter_2",
            "evaluate@iter_2",
        ]
    finally:
        stop(server)


def test_deploy_without_a_prefect_server_says_how_to_start_one(tmp_path):
    root = make_toy_project(tmp_path / "toy", store=False)
    env = offline_env(PREFECT_HOME=str(tmp_path / "prefect"))
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows", "deploy", "-C", str(root), "--pool", "cpu"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "prefect server start" in done.stderr and "Traceback" not in done.stderr
