"""A tiny self-contained DVC project for the orchestration and tracking tests.

Three fast stages shaped like the real campaign: `prepare` writes iteration 0's "model", a
`train` foreach group chains iterations through `prev`, and `evaluate` writes
runs/iter_k/metrics.json and logs per-iteration metrics. Each stage uses tracking/ (through
stages/_common.py) exactly as the real stages do. A stage named in `fail_at.txt` exits with an error, and every
stage that really runs appends its address to `executions.log` (untracked by DVC).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TOY_STAGE = '''\
"""Toy stage: python toy.py <stage> [<iteration> <prev>]."""
import json, os, sys
from pathlib import Path

from exsearch.config.params import load_params
from exsearch.files import write_json, write_text
from stages._common import stage_run
from tracking import log_iteration_metrics

stage, *rest = sys.argv[1:]
iteration = rest[0] if rest else None
params = load_params()
fail = Path("fail_at.txt")
with stage_run(params, stage=stage, iteration=iteration) as run:
    with open("executions.log", "a") as log:
        log.write(os.environ.get("DVC_STAGE", stage) + "\\n")
    if fail.exists() and fail.read_text().strip() == os.environ.get("DVC_STAGE"):
        sys.exit(f"toy: {stage} told to fail")
    if stage == "prepare":
        write_text("runs/iter_0/model.txt", f"{params.seed}\\n")
    elif stage == "train":
        prev = int(Path(f"runs/{rest[1]}/model.txt").read_text())
        write_text(f"runs/{iteration}/model.txt", f"{prev + 1}\\n")
        run.log_metrics({"loss": 1.0 / (prev + 2)})
    else:
        value = int(Path(f"runs/{iteration}/model.txt").read_text())
        metrics = {"overall": {"em": value / 10, "f1": value / 5}, "toy": {"em": value / 10}}
        write_json(f"runs/{iteration}/metrics.json", metrics)
        run.log_artifact(f"runs/{iteration}/metrics.json")
        log_iteration_metrics(params, iteration, metrics)
'''

DVC_YAML = """\
stages:
  prepare:
    cmd: python toy.py prepare
    deps:
      - toy.py
    params:
      - seed
    outs:
      - runs/iter_0/model.txt
  train:
    foreach: ${em.iters}
    do:
      cmd: python toy.py train ${key} ${item.prev}
      deps:
        - toy.py
        - runs/${item.prev}/model.txt
      outs:
        - runs/${key}/model.txt
  evaluate:
    foreach: ${em.iters}
    do:
      cmd: python toy.py evaluate ${key}
      deps:
        - toy.py
        - runs/${key}/model.txt
      metrics:
        - runs/${key}/metrics.json:
            cache: false
"""

PARAMS_YAML = """\
# toy campaign
seed: 1
prepare:
  train: []
  dev: []
em:
  iters:  # the chain
    iter_1: {prev: iter_0}
    iter_2: {prev: iter_1}
  evaluate:
    - iter_0
    - iter_1
    - iter_2
evaluate:
  limit: null
tracking:
  experiment: toy
"""

GITIGNORE = "mlflow.db\n/mlruns/\n/mlartifacts/\nexecutions.log\nfail_at.txt\n.prefect/\n"


# Set by an enclosing campaign (or, for EXSEARCH_TRACKING, by tests/conftest.py): never inherited.
OUTER_VARS = (
    "EXSEARCH_PARENT_RUN_ID",
    "EXSEARCH_TRACKING",
    "MLFLOW_TRACKING_URI",
    "DVC_ROOT",
    "DVC_STAGE",
    "DVC_EXP_NAME",
)


def offline_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: offline, no telemetry, this checkout importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        DVC_NO_ANALYTICS="1",
        DO_NOT_TRACK="true",
        MLFLOW_DISABLE_TELEMETRY="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(REPO),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    for name in OUTER_VARS:
        env.pop(name, None)
    env.update(extra)
    return env


_TEMPLATE: list[Path] = []


def mlflow_store(path: Path) -> str:
    """A migrated, empty MLflow SQLite store at `path`; its URI.

    Creating the tables takes seconds, so one store is built per test session and copied.
    """
    if not _TEMPLATE:
        import mlflow

        tmp_dir = tempfile.mkdtemp(prefix="mlflow-template-")
        atexit.register(shutil.rmtree, tmp_dir, ignore_errors=True)
        tmp = Path(tmp_dir) / "mlflow.db"
        mlflow.MlflowClient(f"sqlite:///{tmp}").search_experiments()
        _TEMPLATE.append(tmp)
    shutil.copyfile(_TEMPLATE[0], path)
    return f"sqlite:///{path}"


def make_toy_project(root: Path, commit: bool = True, store: bool = True) -> Path:
    """Write the toy project into `root` as a git + DVC repo; `store`: add a migrated mlflow.db."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "toy.py").write_text(TOY_STAGE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(PARAMS_YAML)
    (root / ".gitignore").write_text(GITIGNORE)
    env = offline_env()

    def run(*cmd: str) -> None:
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)

    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.name", "Test")
    run("git", "config", "user.email", "test@example.com")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    if store:
        mlflow_store(root / "mlflow.db")
    if commit:
        run("git", "add", "-A")
        run("git", "commit", "-q", "-m", "toy project")
    return root
