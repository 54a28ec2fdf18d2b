"""The warm-up's training set and settings: which questions, which trajectories, which epochs.

`exsearch.agent.warmup` writes one trajectory from a question's supporting facts; this module picks
the questions (those with supporting facts, a seeded draw of `warmup.max_examples`), reads a
teacher's trajectories instead when `warmup.teacher_file` names them, and turns the trajectories
into the weight-1 examples the warm-up fine-tunes on.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from typing import TypeVar

from exsearch import files
from exsearch.agent.warmup import WarmupShape, build_trajectories
from exsearch.config import LEARNER_SECTIONS, AgentConfig, TrainConfig, WarmupConfig
from exsearch.retrieval import Retriever
from exsearch.schema import Question, Trajectory

log = logging.getLogger(__name__)
T = TypeVar("T")


def seeded_draw(items: Sequence[T], n: int | None, seed: int) -> list[T]:
    """`n` of `items` drawn with `seed` (all of them when `n` is None or not smaller).

    A draw, not the head: the training files are grouped by dataset.
    """
    if n and n < len(items):
        return random.Random(seed).sample(list(items), n)
    return list(items)


def warmup_questions(questions: Sequence[Question], cfg: WarmupConfig, seed: int) -> list[Question]:
    """The training questions with supporting facts, at most `cfg.max_examples` of them."""
    return seeded_draw([q for q in questions if q.extra.get("support")], cfg.max_examples, seed)


def warmup_shape(agent: AgentConfig, cfg: WarmupConfig) -> WarmupShape:
    """The shape of derived trajectories: the agent's search settings, the warm-up's records."""
    return WarmupShape(
        top_k=agent.top_k,
        passage_max_words=agent.passage_max_words,
        max_steps=agent.max_steps,
        record_max_words=cfg.record_max_words,
        first_search=cfg.first_search,
        select_from=agent.select_from,
    )


def derived_trajectories(
    questions: Sequence[Question],
    retriever: Retriever,
    agent: AgentConfig,
    cfg: WarmupConfig,
    seed: int,
) -> list[dict]:
    """One trajectory per question from its supporting facts (no LLM involved), as dicts.

    Dicts, like a teacher's records, which are written to the warm-up's file as they were read.
    """
    shape = warmup_shape(agent, cfg)
    built, _ = build_trajectories(questions, retriever, retriever.iter_passages(), shape, seed=seed)
    log.info("built %d warm-up trajectories (%s)", len(built), shape)
    return [t.to_dict() for t in built]


def teacher_trajectories(path: str | os.PathLike) -> list[dict]:
    """Trajectories a teacher wrote (JSONL in the agent's schema), used instead of derived ones."""
    trajectories = list(files.read_jsonl(path))
    log.info("read %d teacher trajectories from %s", len(trajectories), path)
    return trajectories


def warmup_examples(trajectories: Sequence[dict]) -> list[dict]:
    """The fine-tuning examples: every trajectory's chat, weight 1."""
    return [{"messages": Trajectory.from_dict(t).messages, "weight": 1.0} for t in trajectories]


# `train` keys the warm-up does not take: its epochs and learning rate come from `warmup`, it
# is plain SFT whatever the M-step's learner (`method` and every learner's section: its
# examples all weigh 1, so no `min_weight` drops any), and it fine-tunes the base model with
# nothing to replay. dvc.yaml's warmup stage depends on every other `train` key, so changing
# one of these re-runs the EM iterations only (tests/test_stage_deps.py keeps the two in step).
EM_ONLY_TRAIN_KEYS = frozenset(
    {"epochs", "learning_rate", "start_from", "replay", "method", *LEARNER_SECTIONS}
)


def warmup_train_config(train: TrainConfig, cfg: WarmupConfig) -> TrainConfig:
    """The `train` settings with the warm-up's epochs and learning rate, and no EM-only ones."""
    em_only = {
        k: TrainConfig.model_fields[k].get_default(call_default_factory=True)
        for k in EM_ONLY_TRAIN_KEYS
    }
    return train.model_copy(
        update={**em_only, "epochs": cfg.epochs, "learning_rate": cfg.learning_rate}
    )
