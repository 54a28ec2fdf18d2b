"""Group-relative advantages: what an RL learner (`train.method: grpo`) trains on.

The EM weights only ever push a trajectory up (every weight is ≥ 0). GRPO compares each sample
with the other K − 1 samples of its question: a sample earns a reward r_k (exact match or token
F1 of its own answer, less `format_penalty` if it broke the format), and its advantage is

    A_k = (r_k − mean_j r_j) / (std_j r_j + ε)      ('grpo', DeepSeekMath; std with K − 1)
    A_k =  r_k − mean_j r_j                         ('dr_grpo', Dr. GRPO: no std, no bias
                                                      towards questions whose rewards vary little)

so below-average samples are pushed down. A question whose K samples earn the same reward gives
every sample advantage 0: nothing to learn from it (`frac_groups_zero`, the share of such
questions, is the first thing to watch in a GRPO run).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from exsearch.schema import Trajectory

# Added to the group's std, as TRL's GRPOTrainer does: a group of equal rewards divides 0 by ε.
STD_EPSILON = 1e-4


def rewards(
    table: pd.DataFrame, kind: str, format_penalty: float, broken: Sequence[bool]
) -> pd.Series:
    """Each sample's reward: its `correct` (kind 'em') or `f1`, less the penalty if broken."""
    if kind not in ("em", "f1"):
        raise ValueError(f"unknown reward kind {kind!r}; choose 'em' or 'f1'")
    if len(broken) != len(table):
        raise ValueError(f"{len(table)} samples but {len(broken)} format flags")
    earned = table["correct"].astype(float) if kind == "em" else table["f1"].astype(float)
    return earned - format_penalty * pd.Series(broken, index=table.index, dtype=float)


def group_advantages(qid: pd.Series, reward: pd.Series, normalise: str) -> pd.Series:
    """A_k within each question's samples ('grpo': over the std too; 'dr_grpo': mean only)."""
    if normalise not in ("grpo", "dr_grpo"):
        raise ValueError(f"unknown advantage {normalise!r}; choose 'grpo' or 'dr_grpo'")
    groups = reward.groupby(qid)
    centred = reward - groups.transform("mean")
    if normalise == "dr_grpo":
        return centred
    # A question with one sample has no std (NaN): its only sample is the mean, advantage 0.
    return (centred / (groups.transform("std").fillna(0.0) + STD_EPSILON)).astype(float)


def with_advantages(
    table: pd.DataFrame,
    trajectories: Sequence[Trajectory],
    normalise: str,
    kind: str = "em",
    format_penalty: float = 0.0,
) -> pd.DataFrame:
    """A copy of the weigh stage's table with `reward` and `advantage` columns.

    The table has one row per trajectory, in the trajectories' order (`score_table`).
    """
    keys = list(zip(table["qid"].astype(str), table["sample"].astype(int), strict=True))
    if keys != [t.key for t in trajectories]:
        raise ValueError("the table's rows are not these trajectories, in this order")
    out = table.copy()
    out["reward"] = rewards(table, kind, format_penalty, [not t.well_formed for t in trajectories])
    out["advantage"] = group_advantages(out["qid"], out["reward"], normalise)
    return out


def advantage_stats(table: pd.DataFrame) -> dict[str, float]:
    """What a GRPO run is watched by: reward, advantage spread, questions with nothing to learn."""
    reward = table["reward"].astype(float)
    return {
        "reward_mean": float(reward.mean()),
        "reward_std": float(reward.std(ddof=0)),
        "advantage_std": float(table["advantage"].astype(float).std(ddof=0)),
        "advantage_abs_mean": float(table["advantage"].astype(float).abs().mean()),
        # questions whose samples all earned the same reward: every advantage 0
        "frac_groups_zero": float((reward.groupby(table["qid"]).nunique() == 1).mean()),
    }
