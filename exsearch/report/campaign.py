"""The campaign report: metrics per checkpoint as a curve, a plot and a markdown summary.

Every checkpoint's agent is compared, question by question, with iter_0 (the warm-up, what EM
must beat) and with the checkpoint it was trained from, and with each retrieve-then-read baseline
scored beside it (`BASELINES`); each difference carries a paired bootstrap 95% interval
(`checkpoint_comparisons`). The records come from the campaign's run folder, runs/<checkpoint>/,
and the rag_sft baseline's from runs/rag_sft/<checkpoint>/ (`read_records`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from exsearch import files
from exsearch.config import checkpoint_step  # the x position: base is -1, iter_k is k
from exsearch.data import read_trajectories
from exsearch.evaluation import (
    BEHAVIOUR_COLUMNS,
    DIFFERENCE_COLUMNS,
    compare_records,
    difference_cells,
    markdown_table,
)
from exsearch.schema import Trajectory

CURVE_METRICS = ("em", "f1", "acc", "recall", "support_recall")

# What a searcher must beat: one retrieval read by the same model, an iterative retrieval with
# no learned policy, and one retrieval read by a model trained for it as long (`rag_sft`, whose
# records live in runs/rag_sft/). Each is compared with the agent where it was scored.
BASELINES = ("rag", "iter_rag", "rag_sft")
BASELINE_RUNS = {"rag_sft": "rag_sft"}  # baseline → its folder under runs/


Examples = tuple[list[tuple[Trajectory, float]], list[tuple[Trajectory, float]]]


@dataclass(frozen=True)
class CampaignRecords:
    """What the report reads of a campaign: per checkpoint, per EM iteration, per stage."""

    metrics: dict[str, dict]  # evaluated checkpoint → its metrics.json
    predictions: dict[str, list[Trajectory]]  # evaluated checkpoint → its prediction records
    weight_stats: dict[str, dict]  # EM iteration → its weight_stats.json
    examples: dict[str, Examples]  # EM iteration → its highest and lowest weighted trajectories
    seconds: dict[str, float]  # timed stage → wall time


def read_records(
    runs: str | os.PathLike, iterations: Sequence[str], checkpoints: Sequence[str]
) -> CampaignRecords:
    """The records of EM `iterations` and evaluated `checkpoints` under `runs`/<name>/."""
    runs = Path(runs)
    return CampaignRecords(
        metrics={c: files.read_json(runs / c / "metrics.json") for c in checkpoints},
        predictions={c: checkpoint_predictions(runs, c) for c in checkpoints},
        weight_stats={it: files.read_json(runs / it / "weight_stats.json") for it in iterations},
        examples={it: extreme_trajectories(runs / it) for it in iterations},
        seconds=stage_seconds(runs, iterations, checkpoints),
    )


def checkpoint_predictions(runs: Path, checkpoint: str) -> list[Trajectory]:
    """A checkpoint's prediction records, with those of the baselines kept in their own folders."""
    records = read_trajectories(runs / checkpoint / "predictions.jsonl")
    for folder in BASELINE_RUNS.values():
        if (theirs := runs / folder / checkpoint / "predictions.jsonl").is_file():
            records.extend(read_trajectories(theirs))
    return records


def extreme_trajectories(it_dir: Path, n: int = 2) -> Examples:
    """The `n` highest and lowest weighted trajectories of one iteration, with their weights."""
    weights = pd.read_parquet(it_dir / "weights.parquet")
    by_key = {t.key: t for t in read_trajectories(it_dir / "trajectories.jsonl")}
    ranked = weights.sort_values("weight", ascending=False)
    pick = lambda df: [(by_key[(str(r.qid), r.sample)], float(r.weight)) for r in df.itertuples()]  # noqa: E731
    return pick(ranked.head(n)), pick(ranked.tail(n).iloc[::-1])


def stage_seconds(
    runs: Path, iterations: Sequence[str], checkpoints: Sequence[str]
) -> dict[str, float]:
    """Wall time of each timed stage, from the seconds its stats files record."""
    timed: dict[str, float] = {}
    warm = runs / "warmup" / "train_stats.json"
    if warm.is_file() and "seconds" in (w := files.read_json(warm)):
        timed["warmup (training)"] = w["seconds"]
    for it in iterations:
        for stage, name in (
            ("sample", "sample_stats.json"),
            ("weigh", "weight_stats.json"),
            ("train", "train_stats.json"),
        ):
            stats = files.read_json(runs / it / name)
            timed[f"{stage}@{it}"] = stats.get("seconds")
    for c in checkpoints:
        timed[f"evaluate@{c}"] = round(
            sum(files.read_json(runs / c / "metrics.json")["seconds"].values()), 1
        )
    return timed


def summary_metrics(
    metrics: Mapping[str, dict], comparisons: Mapping[str, dict]
) -> dict[str, dict]:
    """Each checkpoint's overall n, F1 and EM, and its paired comparisons (reports/metrics.json)."""
    return {
        c: {
            "n": doc["overall"]["n"],
            "f1": doc["overall"]["f1"],
            "em": doc["overall"]["em"],
            **comparisons[c],
        }
        for c, doc in metrics.items()
    }


def curve_rows(metrics: Mapping[str, dict]) -> list[dict]:
    """One row per checkpoint (in step order) with its overall dev metrics."""
    rows = []
    for name, doc in sorted(metrics.items(), key=lambda kv: checkpoint_step(kv[0])):
        overall = doc["overall"]
        row = {"checkpoint": name, "step": checkpoint_step(name), "n": overall.get("n")}
        row.update({m: overall.get(m) for m in CURVE_METRICS})
        row["searches"] = overall.get("searches_per_question")
        rows.append(row)
    return rows


def checkpoint_comparisons(
    predictions: Mapping[str, Sequence[Trajectory]],
    previous: Mapping[str, str],
    reference: str = "iter_0",
    primary: str = "agent",
    baselines: Sequence[str] = BASELINES,
) -> dict[str, dict[str, dict]]:
    """Paired comparisons of every checkpoint's `primary` method, where the other side exists.

    Against `reference`, against its previous checkpoint (`previous[name]`), and against each
    of `baselines` scored at the same checkpoint.

    `predictions` maps a checkpoint to its prediction records (every method). Each entry is
    {"f1": Interval dict, "em": Interval dict}, keyed `vs_<reference>`, `vs_prev` and
    `<primary>_vs_<baseline>`.
    """

    def method(name: str, m: str) -> list[Trajectory]:
        # A record without a method is one of the primary method's.
        return [r for r in predictions[name] if (primary if r.method is None else r.method) == m]

    def as_dicts(a: list[Trajectory], b: list[Trajectory]) -> dict:
        return {k: v.to_dict() for k, v in compare_records(a, b).items()}

    out: dict[str, dict[str, dict]] = {}
    for name in predictions:
        mine = method(name, primary)
        entry: dict[str, dict] = {}
        if name != reference and reference in predictions and name != "base":
            entry[f"vs_{reference}"] = as_dicts(mine, method(reference, primary))
        prev = previous.get(name)
        if prev in predictions and prev != reference:
            entry["vs_prev"] = as_dicts(mine, method(prev, primary))
        for baseline in baselines:
            if mine and (other := method(name, baseline)):
                entry[f"{primary}_vs_{baseline}"] = as_dicts(mine, other)
        out[name] = entry
    return out


def plot_curve(
    rows: Sequence[dict], path: Path, comparisons: Mapping[str, dict] | None = None
) -> None:
    """EM/F1/Acc against iteration, and F1 gained over iter_0 with its interval; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gains = [
        (r["step"], c["vs_iter_0"]["f1"])
        for r in rows
        if (c := (comparisons or {}).get(r["checkpoint"], {})).get("vs_iter_0")
    ]
    fig, axes = plt.subplots(1, 2 if gains else 1, figsize=(10 if gains else 6, 3.6), dpi=120)
    ax = axes[0] if gains else axes
    xs = [r["step"] for r in rows]
    for m in ("em", "f1", "acc"):
        ax.plot(
            xs,
            [r[m] if r[m] is not None else float("nan") for r in rows],
            marker="o",
            label=m.upper(),
        )
    ax.set_xticks(xs, [r["checkpoint"] for r in rows])
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("dev score (%)")
    ax.set_title("ExSearch: dev metrics per EM iteration")
    ax.grid(alpha=0.3)
    ax.legend()
    if gains:
        g = axes[1]
        steps = [x for x, _ in gains]
        diffs = [i["diff"] for _, i in gains]
        err = [[i["diff"] - i["lo"] for _, i in gains], [i["hi"] - i["diff"] for _, i in gains]]
        g.errorbar(steps, diffs, yerr=err, marker="o", capsize=4, color="C1")
        g.axhline(0, color="grey", lw=0.8)
        g.set_xticks(steps, [f"iter_{x}" for x in steps])
        g.set_ylabel("F1 − F1(iter_0), points")
        g.set_title(f"Gain over the warm-up (95% CI, n={gains[0][1]['n']})")
        g.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _trajectory_md(t: Trajectory, weight: float) -> str:
    steps = "\n".join(
        f"  {i}. search `{s.query}` → record: {s.record or '(none)'}"
        for i, s in enumerate(t.steps, 1)
    )
    return (
        f"- **{t.question}** (gold: {t.answers[0]};"
        f" predicted: {t.prediction or '(empty)'}; weight {weight:.3f};"
        f" {t.finish_reason})\n{steps or '  (no search)'}"
    )


def comparisons_markdown(comparisons: Mapping[str, Mapping[str, dict]]) -> str:
    """One row per checkpoint and comparison: ΔF1, ΔEM, Δsupport recall with 95% intervals, n."""
    rows = [
        {
            "checkpoint": name,
            "compared with": (
                what.removeprefix("vs_") if what.startswith("vs_") else what.replace("_vs_", " vs ")
            ),
            **difference_cells(c),
        }
        for name, entry in comparisons.items()
        for what, c in entry.items()
    ]
    return markdown_table(rows, ["checkpoint", "compared with", "n", *DIFFERENCE_COLUMNS.values()])


def render_markdown(
    rows: Sequence[dict],
    weight_stats: Mapping[str, dict],
    examples: Mapping[str, Examples],
    stage_seconds: Mapping[str, float] | None = None,
    comparisons: Mapping[str, Mapping[str, dict]] | None = None,
    plot: str = "em_curve.png",
    behaviour: Mapping[str, dict] | None = None,
) -> str:
    """The summary: metrics, paired comparisons, search behaviour, weights, example trajectories.

    `plot` is the curve's image, relative to the summary's folder; `behaviour` maps a checkpoint
    to its metrics.json's `behaviour` (how its agent searched per hop count).
    """
    parts = ["# ExSearch campaign report", "", "## Dev metrics per checkpoint", ""]
    # Each table ends in a newline: the blank line after it.
    parts.append(
        markdown_table(
            rows, ["checkpoint", "n", *CURVE_METRICS, "searches"], floats="g", missing="–"
        )
    )
    parts += [f"![metrics per iteration]({plot})", ""]
    if comparisons and any(comparisons.values()):
        parts += [
            "## Paired differences (agent F1/EM/support recall, points; bootstrap 95% intervals "
            "over questions)",
            "",
            comparisons_markdown(comparisons),
        ]
    hop_rows = [
        {"checkpoint": c, "hops": h, **agg}
        for c, b in (behaviour or {}).items()
        for h, agg in (b or {}).get("by_hops", {}).items()
    ]
    if hop_rows:
        parts += [
            "## Search behaviour per hop count (agent)",
            "",
            "`new_support_share`: of the searches after the first, those that showed a supporting "
            "passage no earlier search had shown.",
            "",
            markdown_table(
                hop_rows, ["checkpoint", "hops", *BEHAVIOUR_COLUMNS], floats="g", missing="–"
            ),
        ]
    if weight_stats:
        parts += ["## E-step weights", ""]
        keys = sorted({k for s in weight_stats.values() for k in s})
        stats = [{"iteration": it, **s} for it, s in weight_stats.items()]
        parts.append(markdown_table(stats, ["iteration", *keys], floats="g", missing="–"))
    for it, (best, worst) in examples.items():
        parts += [f"## Example trajectories of {it}", "", "Highest weighted:", ""]
        parts += [_trajectory_md(t, w) for t, w in best]
        parts += ["", "Lowest weighted:", ""]
        parts += [_trajectory_md(t, w) for t, w in worst]
        parts.append("")
    if stage_seconds:
        parts += ["## Wall time per stage", ""]
        timed = [{"stage": k, "seconds": v} for k, v in stage_seconds.items()]
        parts.append(markdown_table(timed, ["stage", "seconds"], floats="g", missing="–"))
    return "\n".join(parts)
