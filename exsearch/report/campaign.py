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
    DIFFERENCE_COLUMNS,
    compare_records,
    difference_cells,
    markdown_table,
)
from exsearch.report.conclusion import conclusion_markdown
from exsearch.schema import Trajectory

CURVE_METRICS = ("em", "f1", "acc", "recall", "support_recall")
# The dev metrics table of the summary: (header, curve row key, decimals); all in % of the
# questions but the searches per question.
METRIC_COLUMNS = (
    ("EM", "em", 1),
    ("F1", "f1", 1),
    ("Acc", "acc", 1),
    ("answer recall", "recall", 1),
    ("support recall", "support_recall", 1),
    ("searches / q", "searches", 2),
)
# What each E-step saw (runs/<iter>/weight_stats.json), as the summary and `exsearch study table`
# show it: (header, key, scale, decimals). Shares in %, the rest as they are.
WEIGHT_COLUMNS = (
    ("sampled EM (%)", "sampled_em", 100.0, 1),
    ("q with a right sample (%)", "questions_with_a_correct_sample", 100.0, 1),
    ("weight entropy", "entropy_mean", 1.0, 2),
    ("ESS", "ess_mean", 1.0, 2),
    ("support recall (%)", "support_recall_mean", 100.0, 1),
    ("searches", "searches_mean", 1.0, 2),
    ("distinct queries", "distinct_queries_mean", 1.0, 2),
    ("q whose samples differ in support (%)", "evidence_share_differing", 100.0, 1),
    ("ρ(score, support) within q", "evidence_spearman_within", 1.0, 2),
    ("ρ pooled", "evidence_spearman_pooled", 1.0, 2),
    ("AUC score: right vs wrong", "evidence_auc_correct", 1.0, 2),
)

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
    baselines: dict[str, dict[str, float]]  # baseline → scored checkpoint → its F1


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
        baselines=baseline_f1(runs, checkpoints),
    )


def baseline_f1(runs: Path, checkpoints: Sequence[str]) -> dict[str, dict[str, float]]:
    """F1 of each baseline (`BASELINES`) at every checkpoint where it was scored.

    `rag` and `iter_rag` are in the checkpoint's metrics.json (`methods`), rag_sft in its own
    folder's (`BASELINE_RUNS`).
    """
    found: dict[str, dict[str, float]] = {}
    for c in checkpoints:
        methods = files.read_json(runs / c / "metrics.json").get("methods", {})
        for b in BASELINES:
            if b in methods:
                found.setdefault(b, {})[c] = methods[b]["overall"]["f1"]
            elif (
                b in BASELINE_RUNS
                and (theirs := runs / BASELINE_RUNS[b] / c / "metrics.json").is_file()
            ):
                found.setdefault(b, {})[c] = files.read_json(theirs)["overall"]["f1"]
    return found


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
    rows: Sequence[dict],
    path: Path,
    comparisons: Mapping[str, dict] | None = None,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
) -> None:
    """The agent's curve with each baseline's F1 beside it, and its F1 gain over iter_0; PNG.

    Left: the agent's EM/F1/Acc per checkpoint; right: F1 gained over iter_0 with its interval.

    The baselines (`baselines`: name → checkpoint → F1) are drawn as open markers at the
    checkpoints where they were scored, so whether the agent is ahead of retrieve-then-read is
    read off the same axes.
    """
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
            label=f"agent {m.upper()}",
        )
    step_of = {r["checkpoint"]: r["step"] for r in rows}
    for n, (name, scored) in enumerate((baselines or {}).items()):
        at = sorted((step_of[c], f1) for c, f1 in scored.items() if c in step_of)
        ax.plot(
            [x for x, _ in at],
            [y for _, y in at],
            linestyle="none",  # scored at some checkpoints only: no line through the others
            marker="os^"[n % 3],
            fillstyle="none",
            color=f"C{3 + n}",
            label=f"{name} F1",
        )
    ax.set_xticks(xs, [r["checkpoint"] for r in rows])
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("dev score (%)")
    ax.set_title("ExSearch: dev metrics per EM iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
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


def stat_cell(value: object, scale: float = 1.0, decimals: int = 1) -> str:
    """A number for a table cell, scaled and rounded; '–' where it is missing or NaN."""
    if not isinstance(value, int | float) or value != value:
        return "–"
    return f"{value * scale:.{decimals}f}"


def metrics_rows(rows: Sequence[dict]) -> list[dict]:
    """The curve's rows as the summary's table shows them (`METRIC_COLUMNS`)."""
    return [
        {
            "checkpoint": r["checkpoint"],
            "n": r["n"],
            **{head: stat_cell(r.get(key), 1.0, d) for head, key, d in METRIC_COLUMNS},
        }
        for r in rows
    ]


def weight_rows(weight_stats: Mapping[str, dict]) -> list[dict]:
    """One row per EM iteration of what its E-step saw (`WEIGHT_COLUMNS`)."""
    return [
        {
            "iteration": it,
            "scheme": s.get("scheme", "–"),
            **{head: stat_cell(s.get(key), scale, d) for head, key, scale, d in WEIGHT_COLUMNS},
        }
        for it, s in weight_stats.items()
    ]


def seconds_rows(stage_seconds: Mapping[str, float | None]) -> list[dict]:
    """Wall time per timed stage, in minutes, and their total."""
    timed = {k: v for k, v in stage_seconds.items() if isinstance(v, int | float)}
    rows = [{"stage": k, "minutes": f"{v / 60:.1f}"} for k, v in timed.items()]
    rows.append({"stage": "**total**", "minutes": f"**{sum(timed.values()) / 60:.1f}**"})
    return rows


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
    by_dataset: Mapping[str, dict] | None = None,
) -> str:
    """The summary: what it shows, then the metrics, comparisons, searches, E-steps and times.

    In order: the conclusion, metrics, paired comparisons, search behaviour per hop, what each
    E-step saw, example trajectories and stage times.

    `plot` is the curve's image, relative to the summary's folder; `behaviour` maps a checkpoint
    to its metrics.json's `behaviour` (how its agent searched per hop count); `by_dataset` is a
    checkpoint's metrics per dev set (names the questions in the conclusion).
    """
    parts = ["# ExSearch campaign report", ""]
    if opening := conclusion_markdown(rows, comparisons or {}, by_dataset or {}):
        parts += [opening]
    parts += [
        "## Dev metrics per checkpoint",
        "",
        "The agent's scores, in % of the questions (searches: per question).",
        "",
    ]
    # Each table ends in a newline: the blank line after it.
    parts.append(markdown_table(metrics_rows(rows), missing="–"))
    parts += [f"![metrics per iteration]({plot})", ""]
    if comparisons and any(comparisons.values()):
        parts += [
            "## Paired differences (agent F1/EM/support recall, points; bootstrap 95% intervals "
            "over questions)",
            "",
            comparisons_markdown(comparisons),
        ]
    hop_rows = [
        {
            "checkpoint": c,
            "hops": h,
            "n": agg.get("n"),
            "F1": stat_cell(agg.get("f1")),
            "support recall": stat_cell(agg.get("support_recall")),
            "searches / q": stat_cell(agg.get("searches_per_question"), decimals=2),
            "later searches": agg.get("later_searches"),
            "new support (%)": stat_cell(agg.get("new_support_share"), 100.0),
        }
        for c, b in (behaviour or {}).items()
        for h, agg in (b or {}).get("by_hops", {}).items()
    ]
    if hop_rows:
        parts += [
            "## Search behaviour per hop count (agent)",
            "",
            "F1 and support recall in %; *new support*: of the searches after the first, the "
            "share that showed a supporting passage no earlier search had shown.",
            "",
            markdown_table(hop_rows, missing="–"),
        ]
    if weight_stats:
        parts += [
            "## What each E-step saw",
            "",
            "Per EM iteration: the samples' answers, weights (entropy in nats and effective sample "
            "size per question, of K), what they found, and whether the score follows it "
            "(runs/<iteration>/weight_stats.json holds every statistic).",
            "",
            markdown_table(weight_rows(weight_stats), missing="–"),
        ]
    for it, (best, worst) in examples.items():
        parts += [f"## Example trajectories of {it}", "", "Highest weighted:", ""]
        parts += [_trajectory_md(t, w) for t, w in best]
        parts += ["", "Lowest weighted:", ""]
        parts += [_trajectory_md(t, w) for t, w in worst]
        parts.append("")
    if stage_seconds:
        parts += [
            "## Wall time per stage",
            "",
            "As each stage recorded it (training, sampling and scoring; loading not included).",
            "",
            markdown_table(seconds_rows(stage_seconds)),
        ]
    return "\n".join(parts)
