"""The GRPO learner, Search-R1's RL objective on the E-step's samples: `train.method: grpo`.

Where the weighted learner trains every sample with the gold answer put in, scaled by a weight
≥ 0, this one trains each sample as the model wrote it, with the group-relative advantage the
weigh stage gave it (`weigh.advantage`, exsearch.estep.advantages): samples better than their
question's average are made more likely, worse ones less. The loss is the clipped policy-ratio
objective over the assistant's tokens (`grpo_loss.py`), against the M-step's start model; the
trainer and its settings are the weighted learner's (`train.*`: LoRA, learning rate, epochs as
optimiser passes over the samples, batch size and accumulation).

Samples whose advantage is 0 add no gradient without the KL term and are not trained on (counted
as `zero_weight_dropped` in the stats); with `train.grpo.beta` > 0 they are kept for the KL. An
iteration where every sample has advantage 0 makes no update: the model is saved as it came.

Why not TRL's GRPOTrainer: it samples inside the training loop, so the E-step would leave its
DVC stage (and its cache, its resumable shards and its evidence statistics); our sampler is the
multi-turn agent with BM25 in the loop. The loss is built from TRL's pieces under our stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import AutoTokenizer, set_seed

from exsearch.checkpoints import base_of, ensure_pad_token, save_model
from exsearch.config import TrainConfig
from exsearch.mstep.grpo_loss import AdvantageCollator, ClippedPolicyTrainer, old_logps
from exsearch.mstep.inputs import EStepOutput
from exsearch.mstep.training import (
    TrainResult,
    encode_counted,
    logged_history,
    model_to_train,
    resumable_run,
    save_trained,
    training_args,
)
from exsearch.schema import Trajectory

log = logging.getLogger(__name__)

# Per optimiser step, besides loss, learning rate and gradient norm (ClippedPolicyTrainer).
WATCHED = ("kl", "clip_ratio", "ratio")


def advantaged_chats(e_step: EStepOutput) -> list[tuple[Trajectory, float]]:
    """Each sampled trajectory with its advantage, in the E-step's order."""
    if "advantage" not in e_step.table.columns:
        raise ValueError(
            "the weights table has no `advantage` column: the weigh stage ran with "
            "weigh.advantage: none; set it to grpo (or dr_grpo) and re-run it"
        )
    if e_step.replay:
        raise ValueError(
            "train.replay: warm-up trajectories have no advantage; GRPO trains on samples only"
        )
    by_key = {(str(r.qid), int(r.sample)): float(r.advantage) for r in e_step.table.itertuples()}
    missing = [t.key for t in e_step.trajectories if t.key not in by_key]
    if missing:
        raise ValueError(f"{len(missing)} trajectories have no advantage (first: {missing[0]})")
    return [(t, by_key[t.key]) for t in e_step.trajectories]


def encode_advantaged(
    tokenizer: Any, chats: list[tuple[Trajectory, float]], max_length: int, keep_zero: bool
) -> tuple[list[dict[str, Any]], TrainResult]:
    """Encode each chat as sampled (labels on what the assistant wrote) with its advantage."""
    counts = TrainResult()
    encoded = []
    for traj, advantage in chats:
        if advantage == 0 and not keep_zero:
            counts.n_zero_weight_dropped += 1
            continue
        enc = encode_counted(tokenizer, traj.messages, max_length, counts, f"sample {traj.key}")
        if enc is not None:
            encoded.append({**enc, "advantage": advantage})
    counts.n_examples = len(encoded)
    return encoded, counts


def fit(
    start: str | Path,
    e_step: EStepOutput,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    max_steps: int | None = None,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train `start` on the E-step's samples with GRPO's clipped objective; save to `out_dir`.

    `callbacks` go to the trainer, as in `train_weighted`.
    """
    began = time.monotonic()
    chats = advantaged_chats(e_step)
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(start))
    data, result = encode_advantaged(tokenizer, chats, cfg.max_length, cfg.grpo.beta > 0)
    set_seed(cfg.seed)
    model = model_to_train(start, cfg)
    if not data:
        # RL's answer to a batch with nothing to learn from: no update. The chain goes on.
        log.warning(
            "GRPO: no sample to train on (%d of %d with advantage 0: every question's samples "
            "earned the same reward; %d too long): the model is saved unchanged",
            result.n_zero_weight_dropped,
            len(chats),
            result.n_too_long,
        )
        save_model(model, tokenizer, out_dir, cfg, base=base_of(start))
        result.seconds = time.monotonic() - began
        return result
    log.info(
        "GRPO on %d of %d samples (%d with advantage 0 left out, %d too long), %d tokens",
        len(data),
        len(chats),
        result.n_zero_weight_dropped,
        result.n_too_long,
        result.n_tokens_trained,
    )
    with resumable_run(out_dir, cfg, start, data, max_steps) as (scratch, resume):
        trainer = ClippedPolicyTrainer(
            model=model,
            args=training_args(cfg, scratch, max_steps, progress),
            train_dataset=Dataset.from_list(data),
            data_collator=AdvantageCollator(tokenizer.pad_token_id, cfg.padding_free),
            processing_class=tokenizer,
            epsilon=cfg.grpo.epsilon,
            beta=cfg.grpo.beta,
            callbacks=list(callbacks),
        )
        # π_old: the start model as the trainer placed it, under the trainer's own autocast.
        with trainer.autocast_smart_context_manager():
            olds = old_logps(trainer.model, data, tokenizer.pad_token_id)
        trainer.train_dataset = Dataset.from_list(
            [{**d, "old_logp": old} for d, old in zip(data, olds, strict=True)]
        )
        trainer.train(resume_from_checkpoint=resume)
        save_trained(trainer, tokenizer, start, out_dir, cfg)
    result.loss_history = logged_history(trainer, WATCHED)
    result.steps = trainer.state.global_step
    result.seconds = time.monotonic() - began
    return result
