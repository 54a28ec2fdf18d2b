"""E-step exploration: K trajectories per training question, written in resumable shards.

Each EM iteration samples questions it has not trained on before (`iteration_questions`): the
pool (training questions minus those to leave out, by default the warm-up's) is shuffled once
with the run's seed and cut into consecutive blocks of `per_iteration` questions; iteration k
takes block k. So iterations are disjoint, and a rerun draws the same questions. When the pool
is used up (after len(pool) // per_iteration iterations) a new pass starts over a new shuffle,
and questions repeat.

Questions are cut into fixed shards; each shard is sampled with its own seed (base seed + shard
number), its trajectories are scored for the E-step (`Trajectory.gold_score`, by the model that
sampled them, reusing their keys/values), and it is written atomically, so a crash keeps the
finished shards and a rerun samples only the missing ones, producing the same trajectories as
an uninterrupted run. The generator is reset before each shard (`Generator.reset`): a shard must
not reuse keys/values that an earlier shard left in the prefix cache, or, in bfloat16, a resumed
run (whose cache starts empty) would sample slightly different trajectories than an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import fmean

from exsearch.agent import Decoding, SearchAgent
from exsearch.config import AgentConfig, GenerationConfig, ModelConfig, SampleConfig
from exsearch.data import read_trajectories, write_trajectories
from exsearch.generation import Generator
from exsearch.prompts import records_chat
from exsearch.schema import Question, Trajectory

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


def model_signature(model_dir: str | os.PathLike) -> list:
    """Name, size and modification time of each file of a model folder: cheap, not a hash."""
    return sorted(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in Path(model_dir).iterdir()
        if f.is_file()
    )


def shard_key(
    cfg: SampleConfig,
    agent: AgentConfig,
    generation: GenerationConfig,
    model: ModelConfig,
    model_dir: str | os.PathLike,
    questions_file: str | os.PathLike,
    questions: Sequence[Question],
) -> str:
    """The shard folder of a run: changes with anything that changes the samples.

    A rerun with the same settings, model files, question file and draw resumes the shards of
    the run before it; any other run starts a folder of its own.
    """
    return fingerprint(
        cfg.model_dump(),
        agent.model_dump(),
        generation.model_dump(),
        model.model_dump(),
        model_signature(model_dir),
        hashlib.sha256(Path(questions_file).read_bytes()).hexdigest(),
        [q.id for q in questions],
    )


def warmup_question_ids(path: str | os.PathLike) -> set[str]:
    """Ids of the questions the warm-up trained on (its trajectories' `qid`s)."""
    return {t.qid for t in read_trajectories(path)}


def sample_stats(records: Sequence[Trajectory], draw: Draw, k: int, seconds: float) -> dict:
    """What a sampling run did: counts, searches and tokens per trajectory, finish reasons.

    `forced_searches` (searches made by `sample.min_searches`) is there only where there were.
    """
    stats = {
        "trajectories": len(records),
        "questions": len(draw.questions),
        "pool": draw.pool_size,
        "pass": draw.pass_number,
        "k": k,
        "searches_per_trajectory": round(fmean(r.n_searches for r in records), 3),
        "tokens_generated": sum(r.tokens.generated for r in records),
        "finish_reasons": dict(Counter(r.finish_reason for r in records)),
        "seconds": round(seconds, 1),
    }
    if forced := sum(s.forced for r in records for s in r.steps):
        stats["forced_searches"] = forced
    return stats


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
    score: str = "trajectory",
    min_searches: int = 0,
) -> list[Trajectory]:
    """Sample `k` trajectories per question, reusing shards already in `shard_dir`.

    Each is scored (`gold_score`) as `score` says (`scored`); `min_searches` forces searches
    (`SearchAgent.run`).
    """
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
                min_searches=min_searches,
            )
            # Scored now, while the model and the trajectories' keys/values are at hand.
            write_trajectories(path, scored(recs, agent.gen, score))
        records.extend(read_trajectories(path))
    return records


def scored(records: Sequence[Trajectory], gen: Generator, score: str) -> list[Trajectory]:
    """`records` with their E-step score: the gold answer's mean log-prob under `gen`'s model.

    `trajectory` (METHOD.md §2) scores it after the whole sampled chat. `records` scores it
    after the question and the evidence the trajectory recorded only (`prompts.records_chat`),
    so a sample that found and kept the evidence scores higher than one that guessed right.
    """
    if score == "records":
        readers = [
            replace(
                r, messages=records_chat(r.question, [s.record for s in r.steps if s.record], "")
            )
            for r in records
        ]
        scores = gen.gold_answer_scores(readers, progress=False)
    elif score == "trajectory":
        scores = gen.gold_answer_scores(records, progress=False)
    else:
        raise ValueError(f"sample.score: unknown {score!r}; expected trajectory or records")
    return [replace(r, gold_score=x) for r, x in zip(records, scores, strict=True)]
