"""Fine-tune a model on weighted chats and save it: the trainer of the warm-up and of `weighted`.

Each example is a chat (`messages`) and a weight w. Chats are encoded with labels on the tokens
the assistant wrote and their passage turns trimmed to fit `max_length` (`chat_encoding.py`);
each sequence's loss is w × its mean token cross-entropy (`weighted_loss.py`, METHOD.md §2).
Examples of weight 0 are dropped before training (they add no gradient; this only saves
compute). Softmax weights sum to 1 per question, so a question adds as much gradient as one
uniform-weighted trajectory. The model is a full model or LoRA adapters on it
(`exsearch.checkpoints`).

    result = train_weighted("models/iter_0", [{"messages": [...], "weight": 0.7}, ...],
                            "models/iter_1", params.train)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoTokenizer, set_seed
from trl import SFTConfig

from exsearch.checkpoints import (
    autocast_bf16,
    base_of,
    ensure_pad_token,
    load_for_training,
    save_model,
    warn_if_bf16_is_slow,
    with_lora,
)
from exsearch.config import TrainConfig
from exsearch.mstep.chat_encoding import (
    IGNORE_INDEX,
    MIN_PASSAGE_TOKENS,
    ConversationTooLong,
    fit_conversation,
)
from exsearch.mstep.weighted_loss import WeightedCollator, WeightedTrainer

log = logging.getLogger(__name__)

_LOGGED = ("epoch", "loss", "learning_rate", "grad_norm")


@dataclass
class TrainResult:
    """What one M-step did; `loss_history` has one entry per optimiser step (step, loss, lr…)."""

    loss_history: list[dict[str, float]] = field(default_factory=list)
    n_examples: int = 0
    n_zero_weight_dropped: int = 0
    n_light_dropped: int = 0  # weight above 0 but below `train.weighted.min_weight`
    n_truncated: int = 0
    n_too_long: int = 0
    n_tokens_trained: int = 0
    steps: int = 0
    seconds: float = 0.0


def run_stats(result: TrainResult) -> dict[str, Any]:
    """The JSON-able summary of a training run (what the train and warmup stages write)."""
    return {
        "examples": result.n_examples,
        "zero_weight_dropped": result.n_zero_weight_dropped,
        "light_dropped": result.n_light_dropped,
        "truncated": result.n_truncated,
        "too_long": result.n_too_long,
        "tokens_trained": result.n_tokens_trained,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "final_loss": result.loss_history[-1]["loss"] if result.loss_history else None,
        "loss_history": result.loss_history,
    }


def encode_examples(
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    max_length: int,
    *,
    min_weight: float = 0.0,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], TrainResult]:
    """Encode `{messages, weight}` examples; drop light ones and ones too long to fit.

    Weight-0 examples add no gradient, so dropping them only saves compute (and changes nothing
    but how batches are formed). Examples below `min_weight` add almost none: each costs a
    full forward and backward pass for a negligible share of the loss. Returns the encoded
    examples and the counts so far.
    """
    counts = TrainResult()
    encoded = []
    for n, ex in enumerate(tqdm(examples, desc="encoding", disable=not progress)):
        if "messages" not in ex or "weight" not in ex:
            raise ValueError(f"example {n}: needs keys 'messages' and 'weight', has {sorted(ex)}")
        w = float(ex["weight"])
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"example {n}: weight must be finite and >= 0, got {ex['weight']!r}")
        if w == 0:
            counts.n_zero_weight_dropped += 1
            continue
        if w < min_weight:
            counts.n_light_dropped += 1
            continue
        enc = encode_counted(tokenizer, ex["messages"], max_length, counts, f"example {n}")
        if enc is not None:
            encoded.append({**enc, "weight": w})
    counts.n_examples = len(encoded)
    return encoded, counts


def encode_counted(
    tokenizer: Any, messages: Sequence[dict], max_length: int, counts: TrainResult, name: str
) -> dict[str, list[int]] | None:
    """One chat encoded to fit `max_length`, counted in `counts`; None (logged) if it cannot fit."""
    try:
        enc, trimmed = fit_conversation(tokenizer, messages, max_length, MIN_PASSAGE_TOKENS)
    except ConversationTooLong as e:
        counts.n_too_long += 1
        log.warning("%s skipped: %s", name, e)
        return None
    counts.n_truncated += trimmed
    counts.n_tokens_trained += sum(t != IGNORE_INDEX for t in enc["labels"])
    return enc


def training_args(
    cfg: TrainConfig, output_dir: str, max_steps: int | None = None, progress: bool = True
) -> Any:
    """The SFTConfig of one M-step (a transformers TrainingArguments)."""
    return SFTConfig(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=max_steps if max_steps is not None else -1,
        lr_scheduler_type=cfg.lr_scheduler,
        # transformers 5 has no `warmup_ratio` argument: `warmup_steps` reads a float in [0, 1)
        # as a fraction of the optimiser steps (TrainingArguments.get_warmup_steps), and
        # `train.warmup_ratio` is validated to lie in [0, 1).
        warmup_steps=cfg.warmup_ratio,
        bf16=autocast_bf16(cfg.bf16),
        seed=cfg.seed,
        logging_steps=1,
        # `train.save_steps`: a checkpoint (model, optimiser, scheduler, RNG) every N steps, the
        # last one kept, so a killed M-step resumes there (`resumable_run`).
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=1,
        eval_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
        # Examples arrive tokenised with our assistant mask, cut to max_length.
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        use_liger_kernel=cfg.use_liger_kernel,
        # SFTConfig turns this on by default; it trades ~30% more compute for memory that
        # micro-batching already saves.
        activation_checkpointing=cfg.activation_checkpointing,
    )


def make_trainer(
    model: Any,
    tokenizer: Any,
    data: Sequence[dict[str, Any]],
    cfg: TrainConfig,
    output_dir: str,
    max_steps: int | None = None,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> Any:
    """The weighted M-step trainer over encoded examples (`encode_examples`).

    `callbacks`: transformers `TrainerCallback`s the caller adds, e.g. one that records the
    loss as it is logged (the stages' tracking), which this library knows nothing of.
    """
    return WeightedTrainer(
        model=model,
        args=training_args(cfg, output_dir, max_steps, progress),
        train_dataset=Dataset.from_list(list(data)),
        data_collator=WeightedCollator(tokenizer.pad_token_id, padding_free=cfg.padding_free),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def train_weighted(
    model_dir: str | Path,
    examples: Sequence[dict[str, Any]],
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    max_steps: int | None = None,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Fine-tune the model in `model_dir` on weighted chats; save the result to `out_dir`.

    Continues from `model_dir` (a full model, or an adapter directory whose adapter is trained
    further). With `cfg.lora`, LoRA adapters go on the attention and MLP projections; the saved
    directory then holds the merged model (`cfg.merge_lora`) or only the adapter plus
    `base_model.json` naming the base model (load it with `load_for_training`). The tokenizer
    is saved too, and `out_dir` appears atomically. `max_steps` overrides `cfg.epochs` (for tests);
    `callbacks` go to the trainer (`make_trainer`).
    `n_tokens_trained` counts labelled tokens in the encoded data (one epoch).
    """
    start = time.monotonic()
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(model_dir))
    data, result = encode_examples(
        tokenizer,
        examples,
        cfg.max_length,
        min_weight=cfg.weighted.min_weight,
        progress=progress,
    )
    _check_encoded(result, len(examples), cfg.max_length)
    set_seed(cfg.seed)
    model = model_to_train(model_dir, cfg)
    with resumable_run(out_dir, cfg, model_dir, data, max_steps) as (scratch, resume):
        trainer = make_trainer(model, tokenizer, data, cfg, scratch, max_steps, progress, callbacks)
        trainer.train(resume_from_checkpoint=resume)
        save_trained(trainer, tokenizer, model_dir, out_dir, cfg)
    result.loss_history = logged_history(trainer)
    result.steps = trainer.state.global_step
    result.seconds = time.monotonic() - start
    return result


def fingerprint(
    model_dir: str | Path, data: Sequence[dict[str, Any]], cfg: TrainConfig, *extra: Any
) -> str:
    """What an M-step's checkpoints belong to: its start model, encoded data and settings."""
    h = hashlib.sha256()
    for part in (str(model_dir), cfg.model_dump_json(), repr(extra)):
        h.update(part.encode())
    for example in data:
        h.update(json.dumps(example, sort_keys=True).encode())
    return h.hexdigest()


@contextlib.contextmanager
def resumable_run(
    out_dir: str | Path,
    cfg: TrainConfig,
    model_dir: str | Path,
    data: Sequence[dict[str, Any]],
    max_steps: int | None,
) -> Iterator[tuple[str, bool | None]]:
    """The trainer's folder, and `True` where a checkpoint of this same run waits in it.

    Without `train.save_steps` a temporary folder, gone afterwards. With it, `.<out>.resume`
    beside the output: it holds the last checkpoint and the run's `fingerprint` (start model,
    encoded data, settings), and a rerun with the same fingerprint resumes from the checkpoint,
    while one with another starts afresh. The folder goes once the run succeeds.
    """
    if not cfg.save_steps:
        with tempfile.TemporaryDirectory(prefix="exsearch-train-") as scratch:
            yield scratch, None
        return
    stamp = fingerprint(model_dir, data, cfg, max_steps)
    out_dir = Path(out_dir)
    folder = out_dir.parent / f".{out_dir.name}.resume"
    stamp_file = folder / "fingerprint"
    if folder.exists() and (not stamp_file.is_file() or stamp_file.read_text() != stamp):
        log.info("%s holds checkpoints of another run: starting afresh", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(stamp)
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if checkpoints:
        log.info("resuming the M-step from %s", checkpoints[-1])
    yield str(folder), True if checkpoints else None
    shutil.rmtree(folder, ignore_errors=True)


def logged_history(trainer: Any, extra: Sequence[str] = ()) -> list[dict[str, float]]:
    """One entry per optimiser step: its step, loss, learning rate, … (and the `extra` keys)."""
    keys = (*_LOGGED, *extra)
    return [
        {"step": int(e["step"]), **{k: float(e[k]) for k in keys if k in e}}
        for e in trainer.state.log_history
        if "loss" in e
    ]


def _check_encoded(result: TrainResult, n_given: int, max_length: int) -> None:
    """Log what encoding kept; fail, saying why, if it kept nothing."""
    if not result.n_examples:
        raise ValueError(
            f"no example to train on: {n_given} given, {result.n_zero_weight_dropped} with "
            f"weight 0, {result.n_light_dropped} below train.weighted.min_weight, "
            f"{result.n_too_long} longer than max_length={max_length}"
        )
    log.info(
        "training on %d examples (%d weight-0 and %d below min_weight dropped, %d trimmed, "
        "%d too long), %d trained tokens",
        result.n_examples,
        result.n_zero_weight_dropped,
        result.n_light_dropped,
        result.n_truncated,
        result.n_too_long,
        result.n_tokens_trained,
    )


def model_to_train(model_dir: str | Path, cfg: TrainConfig) -> Any:
    """The model an M-step trains: `model_dir`'s, in float32, with LoRA adapters or as one whole.

    Weights stay float32 and bf16 is autocast only: a bf16 weight would round away updates of
    lr≈1e-6, and a LoRA delta merged into bf16 weights loses whatever is below their 8-bit
    mantissa. Autocast alone gives the speed (bf16 matmuls, on GPUs and on CPUs with bf16
    instructions alike).
    """
    if cfg.bf16 is True and not torch.cuda.is_available():
        warn_if_bf16_is_slow(torch.bfloat16, "cpu")
    model = load_for_training(model_dir, torch.float32, trainable=cfg.lora)
    if cfg.lora:
        model = with_lora(model, cfg)
    elif hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # full fine-tuning of a model saved as an adapter
    return model


def save_trained(
    trainer: Any, tokenizer: Any, model_dir: str | Path, out_dir: str | Path, cfg: TrainConfig
) -> None:
    """Save the trained model from one process; sharded weights are gathered by all first."""
    state = None
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # Sharded weights (FSDP, ZeRO-3): every process takes part in gathering them.
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.is_world_process_zero():  # one writer under `accelerate launch`
        trained = trainer.model if state is None else _unsharded(model_dir, cfg, state)
        save_model(trained, tokenizer, out_dir, cfg, base=base_of(model_dir))


def _unsharded(model_dir: str | Path, cfg: TrainConfig, state: dict[str, torch.Tensor]) -> Any:
    """The trained model rebuilt in this process from the full state gathered after sharding."""
    model = model_to_train(model_dir, cfg)
    model.load_state_dict(state)
    return model
