"""The real `dvc repro` of the whole campaign, on a tiny local model and a few questions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from exsearch.config.params import load_params

ROOT = Path(__file__).resolve().parents[1]
TINY_PARAMS = ROOT / "tests" / "testdata" / "params.tiny.yaml"


def project_copy(dest: Path) -> Path:
    """The project's files (tracked or new, not ignored) in a fresh git repo at `dest`."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "EXSEARCH_TRACKING": "on",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def tiny_campaign(tmp_path_factory, tiny_model_dir):
    project = project_copy(tmp_path_factory.mktemp("campaign"))
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["model"]["base"] = str(tiny_model_dir)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = dvc(project, "repro")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return project, run


def test_the_dvc_chain_names_each_iterations_predecessor():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("sample", "weigh", "train"):
        assert stages[name]["foreach"] == "${em.iters}"
        assert "models/${item.prev}" in stages[name]["do"]["deps"]
    assert stages["evaluate"]["foreach"] == "${em.evaluate}"
    params = load_params(ROOT / "params.yaml")
    assert params.em.iters["iter_1"].prev == "iter_0"


@pytest.mark.slow
def test_dvc_repro_runs_warmup_and_two_iterations(tiny_campaign):
    project, run = tiny_campaign
    for ckpt in ("base", "iter_0", "iter_1", "iter_2"):
        assert (project / "models" / ckpt / "config.json").is_file()
        metrics = json.loads((project / "runs" / ckpt / "metrics.json").read_text())
        assert metrics["overall"]["n"] == 4 and set(metrics["methods"]) == {
            "agent",
            "rag",
            "direct",
        }
        assert (project / "runs" / ckpt / "predictions.jsonl").is_file()
    for it in ("iter_1", "iter_2"):
        trajectories = (project / "runs" / it / "trajectories.jsonl").read_text().splitlines()
        assert len(trajectories) == 4 * 2  # questions × K
        weights = pd.read_parquet(project / "runs" / it / "weights.parquet")
        assert weights.groupby("qid")["weight"].sum().round(6).eq(1).all()  # softmax per question
        stats = json.loads((project / "runs" / it / "train_stats.json").read_text())
        assert stats["steps"] >= 1
    assert (project / "runs" / "warmup" / "trajectories.jsonl").is_file()
    curve = json.loads((project / "reports" / "em_curve.json").read_text())
    assert [r["checkpoint"] for r in curve] == ["base", "iter_0", "iter_1", "iter_2"]
    assert (project / "reports" / "em_curve.png").stat().st_size > 0
    assert "## Dev metrics per checkpoint" in (project / "reports" / "summary.md").read_text()


@pytest.mark.slow
def test_rag_sft_trains_as_many_steps_as_each_stage_of_the_chain_and_is_compared(tiny_campaign):
    project, _ = tiny_campaign
    runs = project / "runs"
    for matched, stage in (("warmup", "iter_0"), ("iter_1", "iter_1"), ("iter_2", "iter_2")):
        theirs = json.loads((runs / matched / "train_stats.json").read_text())["steps"]
        mine = json.loads((runs / "rag_sft" / stage / "train_stats.json").read_text())
        assert mine["steps"] == mine["matched_steps"] == theirs >= 1
    for it in ("iter_1", "iter_2"):
        doc = json.loads((runs / "rag_sft" / it / "metrics.json").read_text())
        assert doc["primary"] == "rag_sft" and doc["overall"]["n"] == 4
        assert (project / "models" / "rag_sft" / it / "config.json").is_file()
    report = json.loads((project / "reports" / "metrics.json").read_text())
    assert {"agent_vs_rag", "agent_vs_rag_sft"} <= set(report["iter_2"])


@pytest.mark.slow
def test_a_second_dvc_repro_does_nothing(tiny_campaign):
    project, _ = tiny_campaign
    again = dvc(project, "repro")
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout
    status = dvc(project, "status")
    assert "up to date" in status.stdout


@pytest.mark.slow
def test_the_grpo_learner_runs_the_same_chain_from_the_same_warm_up(tiny_campaign, tmp_path):
    project = tmp_path / "grpo"
    shutil.copytree(tiny_campaign[0], project, symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["method"] = "grpo"
    params["weigh"]["advantage"] = "grpo"
    params["weigh"]["reward"] = {"kind": "f1", "format_penalty": 0.5}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = dvc(project, "repro")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ran = {line.split("'")[1] for line in run.stdout.splitlines() if "Running stage" in line}
    assert {"weigh@iter_1", "train@iter_1", "sample@iter_2", "train@iter_2"} <= ran
    assert not {"warmup", "sample@iter_1"} & ran  # the same warm-up and first samples
    for it in ("iter_1", "iter_2"):
        weights = pd.read_parquet(project / "runs" / it / "weights.parquet")
        assert weights.groupby("qid")["advantage"].sum().abs().max() < 1e-9  # centred per question
        weigh_stats = json.loads((project / "runs" / it / "weight_stats.json").read_text())
        assert {"reward_mean", "advantage_std", "frac_groups_zero"} <= set(weigh_stats)
        stats = json.loads((project / "runs" / it / "train_stats.json").read_text())
        assert stats["steps"] == len(stats["loss_history"])
        assert all("kl" in h and "clip_ratio" in h for h in stats["loss_history"])
        # The tiny model's samples are noise cut at the token limit, so their rewards tie and
        # no question has anything to teach: the M-step then makes no update (tests/test_grpo.py
        # trains on real advantages).
        nothing_to_learn = weigh_stats["frac_groups_zero"] == 1
        assert (stats["steps"] == 0) == nothing_to_learn
        if nothing_to_learn:
            assert stats["zero_weight_dropped"] == len(weights)  # every sample left out
        assert (project / "models" / it / "config.json").is_file()
    assert "## Dev metrics per checkpoint" in (project / "reports" / "summary.md").read_text()


@pytest.mark.slow
def test_changing_the_prompts_makes_the_stages_that_use_them_stale(tiny_campaign):
    project, _ = tiny_campaign
    prompts = project / "exsearch" / "prompts.py"
    original = prompts.read_text()
    try:
        prompts.write_text(original + "\n# changed\n")
        stale = set(json.loads(dvc(project, "status", "--json").stdout))
    finally:
        prompts.write_text(original)
    # weigh locates the scored answer span with the prompts' answer tag; train writes it
    assert {"weigh@iter_1", "train@iter_1", "sample@iter_1", "evaluate@iter_0"} <= stale
    assert "prepare" not in stale and "index" not in stale
    assert "up to date" in dvc(project, "status").stdout


@pytest.mark.slow
def test_adding_an_iteration_runs_only_the_new_one(tiny_campaign):
    project, _ = tiny_campaign
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["em"]["iters"]["iter_3"] = {"prev": "iter_2"}
    params["em"]["evaluate"].append("iter_3")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = dvc(project, "repro")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ran = {line.split("'")[1] for line in run.stdout.splitlines() if "Running stage" in line}
    new = {"sample", "weigh", "train", "evaluate", "rag_sft", "evaluate_rag_sft"}
    assert ran == {f"{stage}@iter_3" for stage in new} | {"report"}


STAGE_RUNS = {
    "prepare", "index", "init_model", "warmup", "report",
    *(f"{c}/evaluate" for c in ("base", "iter_0", "iter_1", "iter_2")),
    *(f"{i}/{s}" for i in ("iter_1", "iter_2") for s in ("sample", "weigh", "train")),
    *(f"{i}/rag_sft" for i in ("iter_0", "iter_1", "iter_2")),
    *(f"{i}/evaluate_rag_sft" for i in ("iter_1", "iter_2")),
}  # fmt: skip


def mlflow_runs(project: Path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("exsearch-tiny")
    return client, client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_mlflow_holds_one_parent_with_a_nested_run_per_stage(tiny_campaign):
    project, _ = tiny_campaign
    client, runs = mlflow_runs(project)
    parents = [r for r in runs if r.data.tags.get("role") == "campaign"]
    first = min(parents, key=lambda r: r.info.start_time)  # later tests add campaigns
    nested = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == first.info.run_id
    }
    assert set(nested) == STAGE_RUNS
    assert all(r.info.status == "FINISHED" for r in nested.values())
    train = nested["iter_2/train"].data.tags
    assert train["stage"] == "train" and train["iteration"] == "iter_2" and train["params_hash"]
    em = client.get_metric_history(first.info.run_id, "overall/em")
    assert sorted(m.step for m in em) == [-1, 0, 1, 2]  # base, warm-up, two EM iterations
    artifacts = {a.path for a in client.list_artifacts(nested["iter_1/evaluate"].info.run_id)}
    assert {"metrics.json", "predictions.jsonl"} <= artifacts
    assert client.get_metric_history(nested["iter_1/train"].info.run_id, "loss")
    # MLflow 3's records: each checkpoint a LoggedModel (the Models tab) with the metrics its
    # evaluate run scored; the data each stage read as its dataset inputs
    exp_id = first.info.experiment_id
    models = client.search_logged_models(
        [exp_id], filter_string=f"tags.campaign = '{first.info.run_id}'"
    )
    by_name = {m.name: m for m in models}
    assert set(by_name) == {
        *("base", "iter_0", "iter_1", "iter_2"),
        *(f"rag_sft-{i}" for i in ("iter_0", "iter_1", "iter_2")),
    }
    for name in ("base", "iter_0", "iter_1", "iter_2", "rag_sft-iter_1", "rag_sft-iter_2"):
        scored = {m.key for m in by_name[name].metrics}
        assert any(k.endswith("overall/f1") for k in scored), name
    inputs = nested["iter_1/sample"].inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.source_type) for i in inputs] == [("train", "local")]
    evaluated = nested["iter_1/evaluate"].inputs.dataset_inputs
    assert [i.dataset.name for i in evaluated] == ["dev"]
    tables = {a.path for a in client.list_artifacts(nested["iter_1/evaluate"].info.run_id)}
    assert "predictions_table.json" in tables


@pytest.mark.slow
def test_the_ui_view_filters_to_runs_and_columns_the_campaign_logs(tiny_campaign):
    from flows import runs_view

    project, _ = tiny_campaign
    client, _ = mlflow_runs(project)
    exp = client.get_experiment_by_name("exsearch-tiny")
    shown = client.search_runs([exp.experiment_id], runs_view.EVALUATE_FILTER)
    # One row per scored checkpoint and campaign (earlier tests here add iterations and
    # campaigns): only evaluate runs, every checkpoint among them, and the last checkpoint of
    # a campaign, where the RAG baseline is scored too, has every column of the view.
    assert {r.data.tags.get("stage") for r in shown} == {"evaluate"}
    names = {r.info.run_name for r in shown}
    assert {f"{c}/evaluate" for c in ("base", "iter_0", "iter_1", "iter_2")} <= names
    assert any(set(runs_view.COLUMNS) <= set(r.data.metrics) for r in shown)


@pytest.mark.slow
def test_the_prefect_flow_runs_the_tiny_campaign_like_dvc_repro(
    tiny_campaign, tmp_path_factory, tiny_model_dir, monkeypatch
):
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.campaign import em_campaign

    reference, _ = tiny_campaign
    project = project_copy(tmp_path_factory.mktemp("flow_campaign"))
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["model"]["base"] = str(tiny_model_dir)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "tiny"],
        cwd=project,
    )
    for key, value in {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "EXSEARCH_TRACKING": "on",
        "DVC_NO_ANALYTICS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    with temporary_settings({PREFECT_HOME: str(tmp_path_factory.mktemp("prefect"))}):
        with prefect_test_harness(server_startup_timeout=120):
            result = em_campaign(project_dir=str(project))
    assert set(result["stages"].values()) == {"ran"}
    assert list(result["stages"])[0] == "prepare" and list(result["stages"])[-1] == "report"
    for ckpt in ("base", "iter_0", "iter_1", "iter_2"):
        mine = json.loads((project / "runs" / ckpt / "metrics.json").read_text())
        theirs = json.loads((reference / "runs" / ckpt / "metrics.json").read_text())
        assert mine["overall"]["finish_reasons"] == theirs["overall"]["finish_reasons"]
    for it in ("iter_1", "iter_2"):
        assert (project / "runs" / it / "weights.parquet").is_file()
    _, runs = mlflow_runs(project)
    (parent,) = [r for r in runs if r.data.tags.get("role") == "campaign"]
    assert parent.info.run_id == result["parent_run_id"]
    assert {r.info.run_name for r in runs if r is not parent} == STAGE_RUNS
