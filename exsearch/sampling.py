"""E-step exploration: K trajectories per training question, written in resumable shards.

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
from collections.abc import Sequence
from pathlib import Path

from exsearch import io
from exsearch.agent import Sampling, SearchAgent
from exsearch.schema import Question

log = logging.getLogger(__name__)


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
) -> list[dict]:
    """Sample `k` trajectories per question, reusing shards already in `shard_dir`."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = (len(questions) + shard_size - 1) // shard_size
    records: list[dict] = []
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
                sampling=Sampling(temperature=temperature, top_p=top_p, seed=shard_seed(seed, s)),
            )
            io.write_jsonl(path, recs)
        records.extend(io.read_jsonl(path))
    return records
