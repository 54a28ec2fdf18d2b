"""E-step exploration: K trajectories per training question, written in resumable shards.

Each EM iteration samples questions it has not trained on before (`iteration_questions`): the
pool (training questions minus those to leave out, by default the warm-up's) is shuffled once
with the run's seed and cut into consecutive blocks of `per_iteration` questions; iteration k
takes block k. So iterations are disjoint, and a rerun draws the same questions. When the pool
is used up (after len(pool) // per_iteration iterations) a new pass starts over a new shuffle,
and questions repeat.

Questions are cut into fixed shards; each shard is sampled with its own seed (base seed + shard
number) and written atomically, so a crash keeps the finished shards and a rerun samples only the
missing ones, producing the same trajectories as an uninterrupted run. The generator is reset
before each shard (`Generator.reset`): a shard must not reuse keys/values that an earlier shard
left in the prefix cache, or, in bfloat16, a resumed run (whose cache starts empty) would
sample slightly different trajectories than an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from exsearch.agent import Decoding, SearchAgent
from exsearch.schema import Question, Trajectory
from exsearch.trajectories import read_trajectories, write_trajectories

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Draw:
    """The questions of one EM iteration and where they sit in the pool."""

    questions: list[Question]
    pool_size: int
    pass_number: int  # 0 on the first pass over the pool; > 0 means questions repeat


def iteration_questions(
    questions: Sequence[Question],
    iteration: int,
    per_iteration: int | None,
    *,
    seed: int,
    exclude: Collection[str] = (),
) -> Draw:
    """The training questions EM iteration `iteration` (1, 2, …) samples; see the module doc.

    `per_iteration=None` takes the whole pool every iteration.

    Raises:
        ValueError: `iteration` < 1, or no question is left once `exclude` is taken out.
    """
    if iteration < 1:
        raise ValueError(f"EM iterations are numbered from 1, got {iteration}")
    pool = [q for q in questions if q.id not in exclude]
    if not pool:
        raise ValueError(
            f"no training question left to sample: all {len(questions)} are excluded "
            "(used by the warm-up); add training questions or set sample.exclude_warmup: false"
        )
    if per_iteration is None or per_iteration >= len(pool):
        return Draw(list(pool), len(pool), 0 if per_iteration is None else iteration - 1)
    blocks_per_pass = len(pool) // per_iteration
    pass_number, block = divmod(iteration - 1, blocks_per_pass)
    order = list(pool)
    random.Random(f"{seed}/pass{pass_number}").shuffle(order)
    chosen = order[block * per_iteration : (block + 1) * per_iteration]
    return Draw(chosen, len(pool), pass_number)


def shard_seed(seed: int, shard: int) -> int:
    """Seed of one shard: fixed by the run's seed and the shard's position only."""
    return seed * 1_000_003 + shard


def fingerprint(*parts: object) -> str:
    """Short hash of everything that determines the samples, naming the shard folder."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sample_in_shards(
    questions: Sequence[Question],
    agent: SearchAgent,
    *,
    k: int,
    temperature: float,
    top_p: float,
    seed: int,
    shard_size: int,
    shard_dir: Path,
) -> list[Trajectory]:
    """Sample `k` trajectories per question, reusing shards already in `shard_dir`."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = (len(questions) + shard_size - 1) // shard_size
    records: list[Trajectory] = []
    for s in range(n_shards):
        path = shard_dir / f"shard_{s:05d}.jsonl"
        if path.exists():
            log.info("shard %d/%d: reusing %s", s + 1, n_shards, path.name)
        else:
            batch = questions[s * shard_size : (s + 1) * shard_size]
            log.info("shard %d/%d: sampling %d × %d", s + 1, n_shards, len(batch), k)
            agent.gen.reset()  # the shard depends on its questions and seed only
            recs = agent.run(
                batch,
                method="agent",
                samples=k,
                decoding=Decoding(temperature=temperature, top_p=top_p, seed=shard_seed(seed, s)),
            )
            write_trajectories(path, recs)
        records.extend(read_trajectories(path))
    return records
