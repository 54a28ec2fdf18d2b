"""The M-step's examples: sampled trajectories with their E-step weights, and replayed warm-up ones.

Each example is `{"messages": chat, "weight": w}`, what
`exsearch.mstep.training.train_weighted` takes.
A sampled trajectory is trained with its answer replaced by the gold one (METHOD.md §2); a
replayed warm-up trajectory (`train.replay`) keeps the action format from drifting.

    replay = replay_draw(warmup, 8, "iter_1", seed=0)
    examples = weighted_examples(trajectories, weights) + replayed_examples(replay)
"""

from __future__ import annotations

import random

import pandas as pd

from exsearch.prompts import trajectory_id, with_gold_answer
from exsearch.schema import Trajectory


def weighted_examples(trajectories: list[Trajectory], weights: pd.DataFrame) -> list[dict]:
    """Pair every trajectory (answer replaced by the gold one) with its E-step weight."""
    by_key = {(str(r.qid), int(r.sample)): float(r.weight) for r in weights.itertuples()}
    examples = []
    for t in trajectories:
        if t.key not in by_key:
            raise ValueError(f"trajectory {trajectory_id(t)} has no weight")
        examples.append(
            {"messages": with_gold_answer(t.messages, t.answers[0]), "weight": by_key[t.key]}
        )
    return examples


def replay_draw(warmup: list[Trajectory], n: int, iteration: str, seed: int) -> list[Trajectory]:
    """`n` warm-up trajectories (`train.replay`), a draw fixed by the seed and the iteration."""
    if n <= 0:
        return []
    rng = random.Random(f"{seed}/replay/{iteration}")
    return rng.sample(warmup, min(n, len(warmup)))


def replayed_examples(replay: list[Trajectory]) -> list[dict]:
    """Replayed warm-up trajectories as examples of weight 1, their chats as written."""
    return [{"messages": t.messages, "weight": 1.0} for t in replay]
