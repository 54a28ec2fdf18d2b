"""The campaign report: metrics per checkpoint as a curve, a plot and a markdown summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from exsearch.config import checkpoint_step  # the x position: base is -1, iter_k is k

CURVE_METRICS = ("em", "f1", "acc", "recall", "support_recall")


def curve_rows(metrics: Mapping[str, dict]) -> list[dict]:
    """One row per checkpoint (in step order) with its overall dev metrics."""
    rows = []
    for name, doc in sorted(metrics.items(), key=lambda kv: checkpoint_step(kv[0])):
        overall = doc["overall"]
        row = {"checkpoint": name, "step": checkpoint_step(name)}
        row.update({m: overall.get(m) for m in CURVE_METRICS})
        row["searches"] = overall.get("searches_per_question")
        rows.append(row)
    return rows


def plot_curve(rows: Sequence[dict], path: Path) -> None:
    """EM/F1/Acc against iteration, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(v: object) -> str:
    return "–" if v is None else f"{v:g}" if isinstance(v, float | int) else str(v)


def _table(rows: Sequence[dict], cols: Sequence[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _trajectory_md(t: dict, weight: float) -> str:
    steps = "\n".join(
        f"  {i}. search `{s['query']}` → record: {s.get('record') or '(none)'}"
        for i, s in enumerate(t["steps"], 1)
    )
    return (
        f"- **{t['question']}** (gold: {t['answers'][0]};"
        f" predicted: {t['prediction'] or '(empty)'}; weight {weight:.3f};"
        f" {t['finish_reason']})\n{steps or '  (no search)'}"
    )


def render_markdown(
    rows: Sequence[dict],
    weight_stats: Mapping[str, dict],
    examples: Mapping[str, tuple[list[tuple[dict, float]], list[tuple[dict, float]]]],
    stage_seconds: Mapping[str, float] | None = None,
) -> str:
    """The summary: metric table, weight statistics, best and worst weighted trajectories."""
    parts = ["# ExSearch campaign report", "", "## Dev metrics per checkpoint", ""]
    parts.append(_table(rows, ["checkpoint", *CURVE_METRICS, "searches"]))
    parts += ["", "![metrics per iteration](em_curve.png)", ""]
    if weight_stats:
        parts += ["## E-step weights", ""]
        keys = sorted({k for s in weight_stats.values() for k in s})
        parts.append(
            _table([{"iteration": it, **s} for it, s in weight_stats.items()], ["iteration", *keys])
        )
        parts.append("")
    for it, (best, worst) in examples.items():
        parts += [f"## Example trajectories of {it}", "", "Highest weighted:", ""]
        parts += [_trajectory_md(t, w) for t, w in best]
        parts += ["", "Lowest weighted:", ""]
        parts += [_trajectory_md(t, w) for t, w in worst]
        parts.append("")
    if stage_seconds:
        parts += ["## Wall time per stage", ""]
        parts.append(
            _table(
                [{"stage": k, "seconds": v} for k, v in stage_seconds.items()], ["stage", "seconds"]
            )
        )
        parts.append("")
    return "\n".join(parts)
