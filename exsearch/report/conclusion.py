"""The report's opening paragraph: what the campaign shows, each claim with its paired interval.

ExSearch claims two things, and the paragraph answers both from the report's own comparisons
(`checkpoint_comparisons`), in points: do the EM iterations make a better model than the warm-up
(the last iteration's agent against iter_0), and is what they make a better *searcher* (its
support recall against iter_0's, and its F1 against each retrieve-then-read baseline scored at
the same checkpoint)? Every difference is read as above 0, below 0 or covering 0 by its 95%
interval, so the words never claim more than the interval does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from exsearch.config import checkpoint_step
from exsearch.evaluation import format_interval

# Baseline comparisons the paragraph reads, in the order it lists them, with their names.
BASELINE_NAMES = {
    "agent_vs_rag": "one-shot RAG",
    "agent_vs_iter_rag": "iterative RAG (one follow-up query)",
    "agent_vs_rag_sft": "RAG fine-tuned as long (rag_sft)",
}


def verdict(interval: Mapping[str, float]) -> str:
    """'above 0', 'below 0' or 'covers 0': where the 95% interval lies."""
    if interval["lo"] > 0:
        return "above 0"
    if interval["hi"] < 0:
        return "below 0"
    return "covers 0"


def cited(interval: Mapping[str, float]) -> str:
    """A difference as the paragraph cites it: +4.9 [−0.1, +10.1], above 0 / covers 0."""
    return f"{format_interval(interval)}, {verdict(interval)}"


def dataset_phrase(by_dataset: Mapping[str, Mapping]) -> str:
    """'250 hotpotqa' or '250 hotpotqa, 150 2wiki and 120 musique' dev questions."""
    parts = [f"{d['n']} {name}" for name, d in by_dataset.items()]
    if len(parts) > 1:
        parts = [", ".join(parts[:-1]) + " and " + parts[-1]]
    return (parts[0] if parts else "no") + " dev questions"


def conclusion_markdown(
    rows: Sequence[Mapping],
    comparisons: Mapping[str, Mapping[str, Mapping]],
    by_dataset: Mapping[str, Mapping],
) -> str:
    """The paragraph, from the curve's rows (one per checkpoint) and the paired comparisons.

    Empty when there is no EM iteration scored beside iter_0 (nothing to conclude).
    """
    by_name = {r["checkpoint"]: r for r in rows}
    trained = [c for c in by_name if c.startswith("iter_") and c != "iter_0"]
    if "iter_0" not in by_name or not trained:
        return ""
    last = max(trained, key=checkpoint_step)
    gain = comparisons.get(last, {}).get("vs_iter_0")
    if not gain:
        return ""
    first, end = by_name["iter_0"], by_name[last]
    lines = [
        "## What this campaign shows",
        "",
        f"On {dataset_phrase(by_dataset)}, one seed; differences in points, paired over the "
        "questions, with bootstrap 95% intervals:",
        "",
        f"- **Do the EM iterations make a better model than the warm-up?** {last}'s agent scores "
        f"F1 {end['f1']:.1f} against iter_0's {first['f1']:.1f}: {cited(gain['f1'])}.",
    ]
    if "support_recall" in gain:
        lines.append(
            f"- **A better searcher?** It retrieves {end['support_recall']:.1f}% of the supporting "
            f"passages against iter_0's {first['support_recall']:.1f}% "
            f"({cited(gain['support_recall'])}), with {end['searches']:.2f} searches per question "
            f"against {first['searches']:.2f}."
        )
    against = [
        f"{name} {cited(c['f1'])}"
        for key, name in BASELINE_NAMES.items()
        if (c := comparisons.get(last, {}).get(key))
    ]
    if against:
        lines.append(
            f"- **Ahead of retrieve-then-read?** {last}'s agent minus each baseline at {last}, "
            "F1: " + "; ".join(against) + "."
        )
    return "\n".join(lines) + "\n"
