"""Does the E-step's weight follow what a sample found? Statistics of one iteration's samples.

ExSearch's claim is that the weights reward trajectories whose searches found the evidence. That
needs two things of an iteration's K samples per question: that they differ in what they found
(else there is nothing to choose between), and that the score ranks them by it. Per trajectory
the table holds its `score` (the gold answer's mean log-prob), its `support_recall` (share of
the gold supporting titles among the passages it was shown), `correct` (its own answer right)
and, for the record, `searches`, `distinct_queries` and `weight`. From it:

- `share_differing`: questions whose samples differ in support recall, of those with ≥ 2 samples;
- `spearman_within`: the rank correlation of score and support recall inside each question
  (mean over questions where both vary), what the per-question weights act on;
- `spearman_pooled`: the same over all samples at once;
- `auc_correct`: how well the score separates right answers from wrong ones (0.5: not at all).
"""

from __future__ import annotations

import math

import pandas as pd

EVIDENCE_COLUMNS = ("qid", "score", "support_recall", "correct")


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN if either side is constant."""
    rx, ry = x.rank(), y.rank()
    if rx.nunique() < 2 or ry.nunique() < 2:
        return math.nan
    return float(rx.corr(ry))


def auc(scores: pd.Series, positive: pd.Series) -> float:
    """P(a positive's score > a negative's), ties counting half; NaN without both kinds."""
    pos, neg = scores[positive.astype(bool)], scores[~positive.astype(bool)]
    if pos.empty or neg.empty:
        return math.nan
    ranks = pd.concat([pos, neg]).rank()
    rank_sum = float(ranks.iloc[: len(pos)].sum())
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def evidence_stats(table: pd.DataFrame) -> dict[str, float | None]:
    """The weight–evidence statistics of one iteration's samples (see the module docstring).

    Rows with a NaN score or no support recall (a question without supporting titles) are left
    out; `n_trajectories` and `n_questions` count the rows used. A statistic with nothing to
    measure (no question whose samples both differ and are scored) is None, so the stats file
    stays plain JSON.
    """
    missing = [c for c in EVIDENCE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"evidence statistics need column(s) {missing}; have {list(table.columns)}"
        )
    used = table.dropna(subset=["score", "support_recall"])
    groups = [g for _, g in used.groupby("qid", sort=False) if len(g) >= 2]
    differing = [g["support_recall"].nunique() > 1 for g in groups]
    within = [spearman(g["score"], g["support_recall"]) for g in groups]
    within = [r for r in within if not math.isnan(r)]
    stats = {
        "n_trajectories": len(used),
        "n_questions": int(used["qid"].nunique()),
        "share_differing": sum(differing) / len(differing) if differing else math.nan,
        "spearman_within": sum(within) / len(within) if within else math.nan,
        "n_questions_within": len(within),
        "spearman_pooled": spearman(used["score"], used["support_recall"]),
        "auc_correct": auc(used["score"], used["correct"]),
    }
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in stats.items()}
