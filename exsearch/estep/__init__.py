"""The E-step (METHOD.md §2): K trajectories per training question, and their weights.

`sampling.py` explores in resumable shards; `weighting.py` turns scores into weights;
`evidence.py` says whether the weights follow what the samples found; `advantages.py` gives an
RL learner its group-relative advantages instead.
"""

from exsearch.estep.advantages import advantage_stats, with_advantages
from exsearch.estep.evidence import evidence_stats
from exsearch.estep.sampling import (
    Draw,
    iteration_questions,
    sample_in_shards,
    sample_stats,
    shard_key,
    warmup_question_ids,
)
from exsearch.estep.weighting import compute_weights, score_table, weight_stats

__all__ = [
    "Draw",
    "advantage_stats",
    "compute_weights",
    "evidence_stats",
    "iteration_questions",
    "sample_in_shards",
    "sample_stats",
    "score_table",
    "shard_key",
    "warmup_question_ids",
    "weight_stats",
    "with_advantages",
]
