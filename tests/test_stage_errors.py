"""A stage stops on bad input one way: `error: …` on stderr, exit status 1, no traceback."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exsearch.config import load_params
from stages._common import fail, stage_run
from tracking import SWITCH_ENV, TrackingError

ROOT = Path(__file__).resolve().parents[1]
STAGE_FILES = sorted((ROOT / "stages").glob("*.py"))


def test_fail_raises_system_exit_carrying_the_message():
    with pytest.raises(SystemExit) as done:
        fail("data/x.jsonl: no questions")
    assert done.value.code == "error: data/x.jsonl: no questions"


def test_a_stage_that_stops_prints_one_error_line_and_exits_with_1(tmp_path):
    (tmp_path / "params.yaml").write_text("prepare: {train: [], dev: []}\n")
    run = subprocess.run(
        [sys.executable, "-m", "stages.index", "--corpus", "nowhere.jsonl"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "EXSEARCH_TRACKING": "off"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1] == (
        "error: nowhere.jsonl: corpus not found (run `dvc repro prepare` first)"
    )
    assert "Traceback" not in run.stderr


def exits(path: Path) -> list[str]:
    """`line: code` of each `sys.exit(...)`, `exit(...)` or `raise SystemExit` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in {"sys.exit", "exit"}:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Raise) and node.exc is not None:
            if ast.unparse(node.exc).startswith("SystemExit"):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: p.name)
def test_stages_exit_on_errors_only_through_fail(path):
    allowed = {"_common.py": 1}  # fail itself
    found = exits(path)
    assert len(found) == allowed.get(path.name, 0), f"stages/{path.name}: use fail(): {found}"


def test_a_tracking_error_during_the_stage_is_one_error_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("prepare: {train: [], dev: []}\n")
    with pytest.raises(SystemExit) as done, stage_run(load_params(), "prepare"):
        raise TrackingError("MLflow tracking store x failed during the stage")
    assert done.value.code == "error: MLflow tracking store x failed during the stage"


def test_an_unusable_required_tracking_store_stops_the_stage_before_its_work(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("prepare: {train: [], dev: []}\n")
    monkeypatch.setenv(SWITCH_ENV, "on")
    with socket.socket() as s:  # a port nothing listens on: the health probe is refused
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ran = []
    with pytest.raises(SystemExit) as done, stage_run(load_params(), "prepare"):
        ran.append(True)
    assert not ran
    assert done.value.code.startswith(f"error: MLflow tracking store {uri}: could not open")
    assert "tracking.required: false" in done.value.code


@pytest.mark.parametrize("stage", ["sample", "weigh", "train", "evaluate", "rag_sft"])
def test_an_iteration_that_is_not_a_checkpoint_name_is_refused_before_any_write(stage, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", "--iteration", "../../x"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "EXSEARCH_TRACKING": "off"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2  # argparse's usage error, before params are read
    assert "'../../x' is not a checkpoint name" in run.stderr
    assert "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []


def run_stage(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """`python -m stages.<argv>` in `tmp_path` (the project's params.yaml), untracked."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "EXSEARCH_TRACKING": "off"},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ("stages.weigh", "--iteration", "iter_1", "--trajectories", "none.jsonl"),
            "error: none.jsonl: no such file or folder (the sample stage writes it)",
        ),
        (
            ("stages.train", "--iteration", "iter_1", "--trajectories", "bad.jsonl"),
            "error: bad.jsonl:1: not valid JSON",
        ),
        (
            ("stages.train", "--iteration", "iter_1", "--weights", "bad.jsonl"),
            "error: bad.jsonl: ",
        ),
        (("stages.report", "--runs", "runs"), "error: runs/base/metrics.json: no such file"),
    ],
    ids=["weigh-missing", "train-malformed", "train-weights", "report"],
)
def test_weigh_train_and_report_name_a_bad_input_file_in_one_line(tmp_path, argv, said):
    (tmp_path / "bad.jsonl").write_text('{"qid": 1, broken\n')
    (tmp_path / "runs" / "iter_1").mkdir(parents=True)
    (tmp_path / "runs" / "iter_1" / "trajectories.jsonl").write_text("")
    run = run_stage(tmp_path, *argv)
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stderr.splitlines()[-1].startswith(said)
    assert "Traceback" not in run.stderr


def test_train_refuses_weights_of_another_e_step_before_loading_a_model(tmp_path):
    import pandas as pd

    from exsearch.data import write_trajectories
    from exsearch.schema import Trajectory

    runs = tmp_path / "runs" / "iter_1"
    runs.mkdir(parents=True)
    sampled = [Trajectory(qid="q1", sample=k, answers=["a"], messages=[]) for k in range(2)]
    write_trajectories(runs / "trajectories.jsonl", sampled)
    pd.DataFrame({"qid": ["q2"], "sample": [0], "weight": [1.0]}).to_parquet(
        runs / "weights.parquet"
    )
    run = run_stage(tmp_path, "stages.train", "--iteration", "iter_1", "--model", "nowhere")
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1] == (
        "error: 2 of 2 trajectories have no weight (first: question q1, sample 0): weights and "
        "trajectories are of different E-steps"
    )
