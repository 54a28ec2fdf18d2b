"""The EM campaign as a Prefect flow: one task per DVC stage, in DVC's order, under one MLflow run.

    exsearch run                  # = em_campaign(); or python -m flows run
    exsearch run -S train.learning_rate=5e-5 --name lr5e-5   # a named DVC experiment
    exsearch serve --cron "0 3 * * *" --extend                # one more EM iteration nightly
    exsearch deploy --pool cpu --cron "0 3 * * *"             # the same, run by a worker

DVC stays the cache and the source of truth: each task is `dvc repro --single-item <stage>` in a
subprocess (tasks use NO_CACHE; DVC skips what is up to date, so a rerun resumes after the last
stage that succeeded). Stages run one at a time: DVC takes a repo lock, and the only retried
failure is that lock being busy. The flow opens the MLflow parent run and hands its id to the
stages through `EXSEARCH_PARENT_RUN_ID` (see tracking/campaign.py).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import tracking
from exsearch.config import Params, checkpoint_step, load_params, parse_params
from exsearch.evaluation import markdown_table
from exsearch.files import read_json, write_text
from flows.dag import StageInfo, iteration_number, project_root, read_stages, select, stale

LOCK_BUSY = "Unable to acquire lock"


class DvcBusy(RuntimeError):
    """Another DVC process holds the repository lock: transient, retried."""


class StageFailed(RuntimeError):
    """A DVC command exited with an error: not retried (rerun the flow once it is fixed)."""


def _only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry a busy DVC lock, nothing else."""
    try:
        state.result()
    except DvcBusy:
        return True
    except BaseException:
        return False
    return False


def stream(cmd: list[str], cwd: Path, env: dict[str, str], emit: Callable[[str], Any]) -> list[str]:
    """Run `cmd`, passing each output line to `emit`; return the last lines; raise on failure."""
    tail: collections.deque[str] = collections.deque(maxlen=200)
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    try:
        for line in proc.stdout:
            if line := line.rstrip():
                emit(line)
                tail.append(line)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: don't leave a stage running unsupervised
            proc.terminate()
            proc.wait()
    if code:
        err = DvcBusy if any(LOCK_BUSY in t for t in tail) else StageFailed
        raise err(
            f"`{' '.join(cmd[2:])}` exited with {code} in {cwd}:\n" + "\n".join(list(tail)[-15:])
        )
    return list(tail)


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment plus `extra`, this interpreter's bin first (a stage's `python` is ours).

    flows/__init__.py has already set the telemetry-off defaults in it.
    """
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")  # stage logs reach the flow as they are written
    env.setdefault("TQDM_MININTERVAL", "10")  # one progress line per 10 s in the flow log
    return {**env, **extra}


@task(
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[5, 20, 60],
    retry_condition_fn=_only_transient,
    task_run_name="{label}",
)
def dvc(args: list[str], root: str, env: dict[str, str], label: str) -> str:
    """Run one DVC command; return what happened: ran, skipped, restored or the experiment name.

    `env` holds only the variables added for the stages (parent run id, tracking URI).
    """
    logger = get_run_logger()
    tail = stream(
        [sys.executable, "-m", "dvc", *args], Path(root), subprocess_env(env), logger.info
    )
    text = "\n".join(tail)
    if args[:2] == ["exp", "run"]:
        m = re.search(r"Ran experiment\(s\):\s*(\S+)", text)
        return m.group(1) if m else ""
    if "didn't change, skipping" in text:
        return "skipped"
    return "restored" if "is cached - skipping run" in text else "ran"


def extend_iterations(params_file: str | os.PathLike = "params.yaml") -> str:
    """Append the next EM iteration to params.yaml (`iter_{n+1}: {prev: iter_n}`); return its name.

    Also adds it to `em.evaluate`. A round-trip edit keeps comments and layout; the result is
    validated before it replaces the file atomically.
    """
    from ruamel.yaml import YAML

    path = Path(params_file)
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.representer.add_representer(  # keep `key: null`, not `key:`
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    data = yaml.load(path.read_text(encoding="utf-8"))
    em = data.setdefault("em", {})
    iters = em.get("iters") or {}
    last = max(iters, key=checkpoint_step, default="iter_0")
    new = f"iter_{int(last.rpartition('_')[2]) + 1}"
    iters[new] = {"prev": last}
    em["iters"] = iters
    if isinstance(em.get("evaluate"), list) and new not in em["evaluate"]:
        em["evaluate"].append(new)
    buf = io.StringIO()
    yaml.dump(data, buf)
    parse_params(YAML(typ="safe").load(buf.getvalue()), str(path))
    write_text(path, buf.getvalue())
    return new


def checkpoint_summary(root: Path) -> list[dict[str, Any]]:
    """One row per evaluated checkpoint: the `overall` numbers of runs/<checkpoint>/metrics.json."""
    rows = []
    for f in (root / "runs").glob("*/metrics.json"):
        try:
            doc = read_json(f)
        except (OSError, ValueError):
            continue
        scores = doc.get("overall") if isinstance(doc.get("overall"), dict) else doc
        numbers = {k: v for k, v in scores.items() if isinstance(v, int | float)}
        rows.append({"checkpoint": f.parent.name, **numbers})
    return sorted(rows, key=lambda r: (iteration_number(r["checkpoint"]), r["checkpoint"]))


def check_overrides(overrides: list[str]) -> None:
    """Refuse `-S` overrides that are not `key=value` before any run or deployment is made."""
    if bad := [o for o in overrides if "=" not in o or o.startswith("=")]:
        raise ValueError(f"params overrides must look like key=value (dotted key), got: {bad}")


@flow(name="em-campaign")
def em_campaign(
    iterations: list[str] | None = None,
    overrides: list[str] | None = None,
    dry_run: bool = False,
    exp_name: str | None = None,
    rerun: bool = False,
    extend: bool = False,
    project_dir: str | None = None,
) -> dict[str, Any]:
    """Run the campaign's DVC stages in order, each as a task, under one MLflow parent run.

    Args:
        iterations: only these checkpoints' stages (e.g. ["iter_1"]) and what they depend on.
        overrides: `key=value` params overrides; the run becomes a DVC experiment
            (`dvc exp run -S …`, one task: experiments cannot run stage by stage).
        dry_run: list the stages that would run (changed per `dvc status`, and downstream).
        exp_name: name of the DVC experiment (implies an experiment run).
        rerun: force the stages to run even if DVC finds them up to date.
        extend: first append the next EM iteration to params.yaml (scheduled campaigns).
        project_dir: the DVC project (default: the current directory or the nearest above).
    """
    logger = get_run_logger()
    root = project_root(project_dir or ".")
    overrides = list(overrides or [])
    check_overrides(overrides)
    experiment = bool(overrides or exp_name)
    with contextlib.chdir(root):
        if extend and not dry_run:
            logger.info("params.yaml: added EM iteration %s", extend_iterations())
        params = load_params()
        stages = select(read_stages(root), iterations)
        if dry_run:
            return _dry_run(root, stages, overrides if experiment else None, logger)

        parent, env = _open_parent_run(params, overrides, exp_name)
        force = ["--force"] if rerun else []
        status = "FAILED"
        try:
            if experiment:
                targets = [s.address for s in stages] if iterations else []
                outcome = _run_experiment(root, env, parent, overrides, exp_name, force + targets)
            else:
                outcome = _run_stages(root, env, parent, stages, force)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            rows = _wrap_up(root, parent, status, logger)
    return {"parent_run_id": parent, "stages": outcome, "summary": rows}


def _dry_run(root: Path, stages: list[StageInfo], overrides: list[str] | None, logger: Any) -> dict:
    """Publish the stages that would run (changed per `dvc status`, and downstream).

    `overrides` is not None for an experiment run, which would follow them.
    """
    todo = stale(root, stages)
    note = f" (then `dvc exp run` with {overrides})" if overrides is not None else ""
    text = "\n".join(f"- {s}" for s in todo) or "nothing: everything is up to date"
    create_markdown_artifact(f"## Stages that would run{note}\n\n{text}\n", key="dry-run")
    logger.info("would run: %s", todo or "nothing")
    return {"would_run": todo}


def _open_parent_run(
    params: Params, overrides: list[str], exp_name: str | None
) -> tuple[str | None, dict[str, str]]:
    """Start the campaign's MLflow parent run; return its id and the stages' extra variables.

    The variables hand the stages the tracking store and, if the run started, its id.
    """
    tags = {"prefect_flow_run_id": str(flow_run.id or ""), "overrides": json.dumps(overrides)}
    if exp_name:
        tags["dvc_exp"] = exp_name
    parent = tracking.start_campaign_run(params, f"campaign {flow_run.name}", tags)
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri()}
    if parent:
        env[tracking.PARENT_ENV] = parent
    return parent, env


def _run_stages(
    root: Path, env: dict[str, str], parent: str | None, stages: list[StageInfo], force: list[str]
) -> dict[str, str]:
    """Each stage as its own task, in order; after each, its out hashes go to the parent run."""
    outcome = {}
    for s in stages:
        args = ["repro", "--single-item", *force, s.address]
        outcome[s.address] = dvc(args, str(root), env, s.address)
        tracking.record_lock_hashes(parent)
    return outcome


def _run_experiment(
    root: Path,
    env: dict[str, str],
    parent: str | None,
    overrides: list[str],
    exp_name: str | None,
    extra: list[str],
) -> dict[str, str]:
    """One `dvc exp run` task with the overrides (experiments cannot run stage by stage).

    `extra` holds --force and the target stages, if any. An unnamed experiment gets DVC's name,
    which the parent run is tagged with.
    """
    sets = [a for o in overrides for a in ("-S", o)]
    name = ["--name", exp_name] if exp_name else []
    exp = dvc(["exp", "run", *sets, *name, *extra], str(root), env, "exp run")
    if exp and not exp_name:
        tracking.tag_run(parent, {"dvc_exp": exp})
    return {"exp run": exp}


def _wrap_up(root: Path, parent: str | None, status: str, logger: Any) -> list[dict[str, Any]]:
    """Record out hashes, publish the summary table, close the parent run; never raises."""
    rows: list[dict[str, Any]] = []
    try:
        tracking.record_lock_hashes(parent)
        rows = checkpoint_summary(root)
        table = markdown_table(rows)
        create_markdown_artifact(f"## EM campaign\n\n{table}", key="em-campaign-summary")
        logger.info("summary:\n%s", table)
    except Exception as e:  # don't mask the campaign's own outcome
        logger.warning("could not publish the campaign summary: %s", e)
    tracking.end_campaign_run(parent, status)
    return rows
