"""flows/cli.py: the `exsearch` command line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import mlflow
import pytest
from toy_project import OUTER_VARS, make_toy_project, mlflow_store, offline_env

import tracking
from flows import cli

COMMANDS = ["run", "serve", "deploy", "compare", "export", "ui", "repro"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory (dvc.yaml + params.yaml) as cwd, with its own MLflow store."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(
        "prepare: {train: [], dev: []}\ntracking: {experiment: cli}\n"
    )
    monkeypatch.chdir(tmp_path)
    for name in OUTER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(tmp_path / "mlflow.db"))
    return tmp_path


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_explains_itself_in_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: exsearch {command}" in text
    assert len(text.split("\n\n")[1]) > 60  # a description, not just the usage line


def test_run_hands_its_options_to_the_flow(project, monkeypatch):
    calls = []
    monkeypatch.setattr("flows.campaign.em_campaign", lambda **kw: calls.append(kw))
    argv = [
        "run",
        "--iterations",
        "iter_1",
        "iter_2",
        "-S",
        "seed=3",
        "--set",
        "train.epochs=2",
        "--name",
        "ep2",
        "--rerun",
    ]
    assert cli.main(argv) == 0
    assert calls == [
        {
            "iterations": ["iter_1", "iter_2"],
            "overrides": ["seed=3", "train.epochs=2"],
            "dry_run": False,
            "exp_name": "ep2",
            "rerun": True,
            "extend": False,
            "project_dir": str(project),
        }
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "-S", "seed"],
        ["serve"],
        ["serve", "--cron", "x", "--interval", "5"],
        ["deploy"],
        ["deploy", "--pool", "p", "--cron", "x", "--interval", "5"],
    ],
)
def test_malformed_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 2
    assert "exsearch" in capsys.readouterr().err


def test_missing_project_is_a_readable_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare"]) == 1
    assert "no dvc.yaml" in capsys.readouterr().err


def test_compare_tabulates_campaigns_by_iteration_and_saves_csv_and_markdown(
    project, monkeypatch, capsys
):
    from exsearch.config.params import load_params

    params = load_params()
    for campaign, ems in [("first", [0.1, 0.2]), ("second", [0.3, 0.5])]:
        parent = tracking.start_campaign_run(params, campaign)
        monkeypatch.setenv(tracking.PARENT_ENV, parent)
        for i, em in enumerate(ems, 1):
            with tracking.stage_run(params, "evaluate", f"iter_{i}"):
                tracking.log_iteration_metrics(params, f"iter_{i}", {"overall": {"em": em}, "x": 1})
        tracking.end_campaign_run(parent)
    assert cli.main(["compare"]) == 0
    printed = capsys.readouterr().out
    assert "| run | iteration | F1 | EM | sup.rec | searches | ΔF1 vs iter_0 |" in printed
    assert "| second | iter_2 |  | 0.5 |" in printed
    assert max(len(line) for line in printed.splitlines()) <= 100
    assert cli.main(["compare", "--wide"]) == 0
    assert (
        "| campaign | dvc_exp | git_commit | iteration | status | started | overall/em |"
        in capsys.readouterr().out
    )
    with (project / "reports/compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["campaign"], r["iteration"], float(r["overall/em"])) for r in rows] == [
        ("first", "iter_1", 0.1),
        ("first", "iter_2", 0.2),
        ("second", "iter_1", 0.3),
        ("second", "iter_2", 0.5),
    ]
    assert "x" not in rows[0]
    assert (project / "reports/compare.md").read_text().count("| first |") == 2


def test_ui_serves_the_project_store_on_localhost_only(project, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    started = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: started.append(cmd) or 0)
    assert cli.main(["ui", "--port", "5123"]) == 0
    assert "MLflow UI: http://127.0.0.1:5123 " in capsys.readouterr().out  # no experiment yet
    cmd = started[0]
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{project / 'mlflow.db'}"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5123"


def test_ui_prints_the_runs_table_of_the_experiment_not_mlflows_genai_overview(
    project, monkeypatch, capsys
):
    from exsearch.config.params import load_params

    tracking.end_campaign_run(tracking.start_campaign_run(load_params(), "any"))  # creates it
    exp_id = mlflow.MlflowClient().get_experiment_by_name(load_params().tracking.experiment)
    monkeypatch.setattr(subprocess, "call", lambda cmd: 0)
    assert cli.main(["ui", "--port", "5123"]) == 0
    url = f"http://127.0.0.1:5123/#/experiments/{exp_id.experiment_id}"
    assert f"{url}/runs?workflowType=machine_learning&viewStateShareKey=" in capsys.readouterr().out


def test_ui_saves_the_checkpoint_view_the_printed_link_opens(project, monkeypatch, capsys):
    from exsearch.config.params import load_params
    from flows import runs_view

    tracking.end_campaign_run(tracking.start_campaign_run(load_params(), "any"))
    client = mlflow.MlflowClient(tracking.tracking_uri())  # the store `exsearch ui` serves
    exp = client.get_experiment_by_name(load_params().tracking.experiment)
    monkeypatch.setattr(subprocess, "call", lambda cmd: 0)
    assert cli.main(["ui", "--port", "5123"]) == 0
    key = capsys.readouterr().out.split("viewStateShareKey=")[1].split()[0]
    tags = client.get_experiment(exp.experiment_id).tags
    view = json.loads(tags[f"mlflow.sharedViewState.{key}"])
    assert view["searchFilter"] == "tags.stage = 'evaluate'"
    assert view["selectedColumns"][:2] == ["metrics.`overall/f1`", "metrics.`overall/em`"]
    assert len(view["selectedColumns"]) == len(runs_view.COLUMNS)


@pytest.mark.slow
def test_repro_runs_dvc_under_one_new_parent_run(tmp_path, monkeypatch):
    root = make_toy_project(tmp_path / "toy")
    for key, value in offline_env().items():
        monkeypatch.setenv(key, value)
    for name in OUTER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["repro", "-C", str(root), "--", "train@iter_1"]) == 0
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("role") == "campaign")
    nested = [r for r in runs if r is not parent]
    assert parent.info.run_name == "repro train@iter_1"
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in nested) == ["iter_1/train", "prepare"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in nested)
    assert all(r.data.tags["dvc.outs_recorded"] == "true" for r in nested)


@pytest.mark.slow
def test_python_m_flows_dry_run_works_without_a_prefect_server(tmp_path):
    root = make_toy_project(tmp_path / "toy", store=False)
    env = offline_env(PREFECT_HOME=str(tmp_path / "prefect"))
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows", "run", "--dry-run", "--iterations", "iter_1"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "would run: ['prepare', 'train@iter_1', 'evaluate@iter_1']" in done.stdout + done.stderr
    assert not (root / "runs").exists()


def test_compare_shows_the_paired_intervals_the_report_logged(project, monkeypatch, capsys):
    from exsearch.config.params import load_params

    params = load_params()
    parent = tracking.start_campaign_run(params, "with-intervals")
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    for i in (1, 2):
        with tracking.stage_run(params, "evaluate", f"iter_{i}"):
            tracking.log_iteration_metrics(params, f"iter_{i}", {"overall": {"f1": 20.0 + i}})
    gain = {"vs_iter_0": {"f1": {"diff": 4.2, "lo": -1.3, "hi": 9.8, "n": 250}}}
    with tracking.stage_run(params, "report") as run:
        run.log_iteration_metrics("iter_2", gain)
    tracking.end_campaign_run(parent)
    assert cli.main(["compare"]) == 0
    with (project / "reports/compare.csv").open() as f:
        rows = {r["iteration"]: r for r in csv.DictReader(f)}
    assert rows["iter_2"]["ΔF1 vs iter_0"] == "+4.2 [-1.3, +9.8] n=250"
    assert rows["iter_1"]["ΔF1 vs iter_0"] == ""
    assert "ΔF1 vs iter_0" in capsys.readouterr().out


def test_the_narrow_compare_view_of_a_real_campaign_row_fits_100_columns():
    from exsearch.evaluation import markdown_table
    from flows.compare import narrow_rows

    row = {
        "campaign": "repro 9f872968 520bd8 with a long experiment label",
        "dvc_exp": "",
        "iteration": "iter_12",
        "overall/f1": 27.45,
        "overall/em": 20.8,
        "overall/support_recall": 64.4,
        "overall/searches_per_question": 1.04,
        "ΔF1 vs iter_0": "+13.2 [-10.5, +18.0] n=520",
        "ΔF1 agent − RAG": "+3.0 [-2.5, +8.1] n=520",
    }
    (narrow,) = narrow_rows([row])
    assert narrow["ΔF1 vs iter_0"] == "+13.2 [-10.5, +18.0]" and "ΔF1 agent − RAG" not in narrow
    assert narrow["run"].endswith("…") and len(narrow["run"]) == 24
    table = markdown_table([narrow], floats=".3g")
    assert max(len(line) for line in table.splitlines()) <= 100
    named = narrow_rows([{**row, "dvc_exp": "exp-seed2"}])[0]
    assert named["run"] == "exp-seed2"  # an experiment is named by its DVC name
