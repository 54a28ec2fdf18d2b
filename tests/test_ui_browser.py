"""The MLflow view `exsearch ui` opens, as a browser shows it (flows.runs_view).

Starts `mlflow ui` (the command `exsearch ui` runs) on 127.0.0.1 over a store holding one
campaign, and loads the printed link in headless Chromium: the runs table must come up filtered
to the evaluate runs, one per checkpoint, with the agent's F1 as a column, without a click.
Skipped where no Chromium is installed (`apt-get install chromium`); the screenshot is left in
the test's temporary folder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest
from browser import NEEDS_CHROMIUM, chromium
from servers import free_port, stop, wait_for
from toy_project import offline_env

from flows import runs_view
from flows.cli import ui_command

pytestmark = [pytest.mark.slow, NEEDS_CHROMIUM]


def campaign_store(db: Path) -> tuple[mlflow.MlflowClient, str]:
    """A store with one campaign: a parent, a train run and two evaluate runs with metrics."""
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment("exsearch")
    parent = client.create_run(exp, run_name="repro abc", tags={"role": "campaign"}).info.run_id
    nested = {"mlflow.parentRunId": parent}
    client.create_run(exp, run_name="iter_1/train", tags={**nested, "stage": "train"})
    for name, f1 in (("iter_0", 22.5), ("iter_1", 25.9)):
        run = client.create_run(
            exp, run_name=f"{name}/evaluate", tags={**nested, "stage": "evaluate"}
        )
        for metric in runs_view.COLUMNS:
            client.log_metric(run.info.run_id, metric, f1 if metric == "overall/f1" else 1.0)
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent)
    return client, exp


def test_the_printed_link_opens_the_checkpoints_with_their_f1_without_a_click(tmp_path):
    client, exp = campaign_store(tmp_path / "mlflow.db")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = runs_view.view_url(base, exp, runs_view.save_view(client, exp))
    cmd = [*ui_command(f"sqlite:///{tmp_path / 'mlflow.db'}", port), "--workers", "1"]
    server = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(f"{base}/health", server)
        dom = chromium(url, "--dump-dom")
        chromium(url, f"--screenshot={tmp_path / 'runs_view.png'}")
    finally:
        stop(server)
    assert "iter_0/evaluate" in dom and "iter_1/evaluate" in dom
    assert "iter_1/train" not in dom  # filtered to the evaluate runs
    assert "overall/f1" in dom and "25.9" in dom  # the F1 column, shown by default
    assert (tmp_path / "runs_view.png").stat().st_size > 10_000
