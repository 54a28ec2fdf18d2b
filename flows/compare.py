"""`exsearch compare`: campaigns × iterations from MLflow, with the intervals the report logged.

One row per campaign (parent run) and iteration, read from the latest evaluate run, plus the
paired comparisons (Δ vs iter_0, vs the previous iteration, agent − RAG) the report stage logged
on the campaign run at the iteration's step. The terminal gets `narrow_rows` (what a
comparison of checkpoints needs, within 100 columns); the files and `--wide` get every column.
"""

from __future__ import annotations

from typing import Any

from flows.dag import iteration_number


def compare_rows(experiment: str, prefix: str = "overall/") -> list[dict[str, Any]]:
    """One row per (campaign, iteration): the latest evaluate run's metrics under `prefix`."""
    import mlflow

    from tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        raise LookupError(f"no MLflow experiment {experiment!r} in {tracking_uri()}")
    evals = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="tags.stage = 'evaluate'",
        order_by=["start_time DESC"],
        output_format="list",
    )
    parent_ids = {r.data.tags.get("mlflow.parentRunId") for r in evals} - {None}
    parents = {pid: mlflow.get_run(pid) for pid in parent_ids}
    rows, seen = [], set()
    parent_cache: dict[str, dict[int, dict[str, float]]] = {}
    for r in evals:
        pid, it = r.data.tags.get("mlflow.parentRunId"), r.data.tags.get("iteration", "")
        if (pid, it) in seen:
            continue
        seen.add((pid, it))
        parent = parents.get(pid)
        row = {
            "campaign": parent.info.run_name if parent else "",
            "dvc_exp": r.data.tags.get("dvc_exp", ""),
            "git_commit": r.data.tags.get("git_commit", "")[:12],
            "iteration": it,
            "status": r.info.status,
            "started": parent.info.start_time if parent else r.info.start_time,
        }
        row.update({k: v for k, v in sorted(r.data.metrics.items()) if k.startswith(prefix)})
        steps = _parent_comparisons(pid, parent_cache) if pid else {}
        found = {**steps.get(iteration_step_of(it), {}), **r.data.metrics}
        for what, label in COMPARISONS.items():
            for metric in ("f1", "em"):
                cell = _interval_cell(found, f"{what}/{metric}")
                if cell:
                    row[f"Δ{metric.upper()} {label}"] = cell
        rows.append(row)
    rows.sort(key=lambda x: (x["started"], iteration_number(x["iteration"])))
    for row in rows:
        row["started"] = _iso(row["started"])
    return rows


# Paired comparisons the report and evaluate stages log (key prefix → column label).
COMPARISONS = {
    "vs_iter_0": "vs iter_0",
    "vs_prev": "vs previous",
    "agent_vs_rag": "agent − RAG",
    "agent_vs_iter_rag": "agent − iter-RAG",
    "agent_vs_rag_sft": "agent − RAG-SFT",
}


def iteration_step_of(iteration: str) -> int:
    """The MLflow step an iteration's metrics are logged at (-2 for an unknown name)."""
    from tracking import iteration_step

    try:
        return iteration_step(iteration)
    except ValueError:
        return -2


# The narrow view: column label → the full row's key. One interval, without its n (the same
# for every row of a campaign: it is in the wide view and the CSV).
NARROW = {
    "iteration": "iteration",
    "F1": "overall/f1",
    "EM": "overall/em",
    "sup.rec": "overall/support_recall",
    "searches": "overall/searches_per_question",
    "ΔF1 vs iter_0": "ΔF1 vs iter_0",
}
CAMPAIGN_WIDTH = 24


def narrow_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` cut to the narrow view: the run named by its DVC experiment, else its campaign."""
    out = []
    for row in rows:
        name = str(row.get("dvc_exp") or row.get("campaign") or "")
        cut = {"run": name if len(name) <= CAMPAIGN_WIDTH else name[: CAMPAIGN_WIDTH - 1] + "…"}
        for label, key in NARROW.items():
            value = row.get(key)
            cut[label] = value.split(" n=")[0] if isinstance(value, str) else value
        out.append(cut)
    return out


def _parent_comparisons(
    parent_id: str, cache: dict[str, dict[int, dict[str, float]]]
) -> dict[int, dict[str, float]]:
    """Step (iteration) → the comparison metrics the report logged on the campaign run."""
    if parent_id in cache:
        return cache[parent_id]
    import mlflow

    client = mlflow.MlflowClient()
    by_step: dict[int, dict[str, float]] = {}
    keys = [k for k in client.get_run(parent_id).data.metrics if k.split("/")[0] in COMPARISONS]
    for key in keys:
        for m in client.get_metric_history(parent_id, key):
            by_step.setdefault(m.step, {})[key] = m.value
    cache[parent_id] = by_step
    return by_step


def _interval_cell(metrics: dict[str, float], key: str) -> str:
    """`+4.2 [-1.3, +9.8] n=250` from `<key>/diff`, `/lo`, `/hi`, `/n`; '' if absent."""
    try:
        d, lo, hi = (metrics[f"{key}/{p}"] for p in ("diff", "lo", "hi"))
    except KeyError:
        return ""
    n = metrics.get(f"{key}/n")
    return f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]" + (f" n={int(n)}" if n is not None else "")


def _iso(ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000).isoformat(timespec="seconds")
