"""E-step importance weights: how much each sampled trajectory counts in the next M-step.

For every trajectory z_k of a question the model's answer is replaced by the gold answer y and
scored under the current model θ_t (METHOD.md §2):

    s_k = (1/|y|) Σ_{tokens of y} log p(y_tok | x, z_k; θ_t)

Only the tokens of y count, not the `<answer>` tags around it. A higher score means the trajectory
made the gold answer more likely, so it gets a higher weight under every likelihood-based scheme
(the authors' code divided by a sum of negative log-likelihoods, which inverts the ranking;
METHOD.md §6). Schemes, over a table with one row per trajectory (`qid`, `sample`, `score`, `f1`,
`correct`):

- `softmax`: w_k = exp(s_k/τ) / Σ_j exp(s_j/τ) within each question (the default);
- `exp`:     w_k = c·exp(s_k), not normalised (the authors' code);
- `uniform`: w_k = 1 (plain SFT on own samples);
- `f1`:      w_k = token F1 of the sampled answer against the gold aliases;
- `filter`:  w_k = 1 if the sampled answer is correct, else 0 (rejection sampling).

`correct` is exact match (SQuAD normalisation, any gold alias), not cover-EM: cover-EM would keep
verbose answers that merely contain the gold string and teach the model to hedge.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from exsearch.metrics import exact_match, f1_score, normalize_answer, supporting_recall
from exsearch.prompts import trajectory_id
from exsearch.retrieval import shown_titles
from exsearch.schema import Trajectory

log = logging.getLogger(__name__)


def support_found(traj: Trajectory) -> float | None:
    """Share of the question's gold supporting titles among the passages the chat showed.

    None for a question without supporting titles.
    """
    shown = [
        title for m in traj.messages if m["role"] == "user" for title in shown_titles(m["content"])
    ]
    return supporting_recall([shown], [traj.supporting_titles]).per_sample[0]


def score_table(trajectories: Sequence[Trajectory], scores: Sequence[float]) -> pd.DataFrame:
    """One row per trajectory: what it scored, answered and found.

    `qid`, `sample`, `score`, `prediction`, `gold`; `f1` and `correct` (exact match) compare the
    model's own prediction with every gold alias; `support_recall` (`support_found`),
    `searches` and `distinct_queries` say what its searches found (exsearch.estep.evidence).
    """
    if len(trajectories) != len(scores):
        raise ValueError(f"{len(trajectories)} trajectories but {len(scores)} scores")
    rows = []
    for traj, score in zip(trajectories, scores, strict=True):
        pred = traj.prediction
        golds = list(traj.answers)
        if not golds:
            raise ValueError(f"trajectory {trajectory_id(traj)}: no gold answers")
        rows.append(
            {
                "qid": traj.qid,
                "sample": traj.sample,
                "score": float(score),
                "prediction": pred,
                "gold": golds[0] if golds else "",
                "f1": float(f1_score(pred, golds)),
                "correct": bool(exact_match(pred, golds)),
                "support_recall": support_found(traj),
                "searches": traj.n_searches,
                # the sameness the agent's repeated-query notice uses
                "distinct_queries": len({normalize_answer(s.query) for s in traj.steps}),
            }
        )
    return pd.DataFrame(rows)


def _need(df: pd.DataFrame, columns: Sequence[str], scheme: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"scheme {scheme!r} needs column(s) {missing}; table has {list(df.columns)}"
        )


def _softmax(df: pd.DataFrame, tau: float, c: float) -> pd.Series:
    if tau <= 0:
        raise ValueError(f"softmax temperature tau must be > 0, got {tau}")
    z = df["score"].astype(float) / tau
    shifted = z - z.groupby(df["qid"]).transform("max")
    e = np.exp(shifted).fillna(0.0)
    total = e.groupby(df["qid"]).transform("sum")
    return (e / total.where(total > 0, 1.0)).astype(float)


def _exp(df: pd.DataFrame, tau: float, c: float) -> pd.Series:
    return (c * np.exp(df["score"].astype(float))).fillna(0.0)


def _uniform(df: pd.DataFrame, tau: float, c: float) -> float:
    return 1.0


def _f1(df: pd.DataFrame, tau: float, c: float) -> pd.Series:
    return df["f1"].astype(float)


def _filter(df: pd.DataFrame, tau: float, c: float) -> pd.Series:
    return df["correct"].astype(bool).astype(float)


@dataclass(frozen=True)
class WeightScheme:
    """One weighting scheme: the columns it reads and the weights it gives (tau, c its knobs)."""

    columns: tuple[str, ...]
    weigh: Callable[[pd.DataFrame, float, float], pd.Series | float]


# `weigh.scheme` → its scheme; exsearch.config.training lists the same names
# (tests/test_registries.py checks it). A new scheme is a function and its line here.
SCHEMES: dict[str, WeightScheme] = {
    "softmax": WeightScheme(("qid", "score"), _softmax),
    "exp": WeightScheme(("score",), _exp),
    "uniform": WeightScheme((), _uniform),
    "f1": WeightScheme(("f1",), _f1),
    "filter": WeightScheme(("correct",), _filter),
}


def compute_weights(
    df: pd.DataFrame, scheme: str, tau: float = 1.0, c: float = 4.0
) -> pd.DataFrame:
    """Return a copy of `df` with a `weight` column and a `scheme` column.

    Likelihood schemes (`softmax`, `exp`) give weight 0 to a NaN score. Softmax is computed
    stably (scores shifted by the question's maximum), so its weights sum to 1 per question.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown weighting scheme {scheme!r}; choose one of {list(SCHEMES)}")
    chosen = SCHEMES[scheme]
    _need(df, chosen.columns, scheme)
    out = df.copy()
    out["weight"] = chosen.weigh(out, tau, c)
    out["scheme"] = scheme
    return out


def weight_stats(df: pd.DataFrame) -> dict[str, float]:
    """Summary of a weight table, for logging.

    Per question, weights are normalised to sum to 1 for the entropy (nats) and the effective
    sample size ESS = (Σw)² / Σw² (K for uniform weights, 1 for one-hot). A question whose weights
    are all zero has ESS 0 and is left out of the mean entropy; `frac_questions_all_zero` counts it.
    """
    w = df["weight"].astype(float)
    groups = w.groupby(df["qid"])
    total = groups.sum()
    ess = (total**2 / groups.apply(lambda g: float((g**2).sum()))).where(total > 0, 0.0)

    def entropy(g: pd.Series) -> float:
        p = g[g > 0] / g.sum()
        return float(-(p * np.log(p)).sum())

    live = total > 0
    entropies = groups.apply(entropy)[live] if live.any() else pd.Series(dtype=float)
    return {
        "n_trajectories": len(df),
        "n_questions": int(total.size),
        "weight_mean": float(w.mean()),
        "weight_min": float(w.min()),
        "weight_max": float(w.max()),
        "entropy_mean": float(entropies.mean()) if len(entropies) else math.nan,
        "ess_mean": float(ess.mean()),
        "frac_zero_weight": float((w == 0).mean()),
        "frac_questions_all_zero": float((~live).mean()),
    }
