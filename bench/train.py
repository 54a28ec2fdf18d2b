"""The weighted M-step against a plain transformers Trainer, on the same warm-up examples.

    python bench/train.py [--model models/base] [--examples 24] [--repeats 1]

Builds warm-up trajectories the way `stages.warmup` does (the `agent`, `warmup` and `train`
settings of params.yaml; needs `dvc repro index init_model`), encodes them with the assistant
mask, and trains each contender for the same optimiser steps on the same examples, each in a
fresh process (so each one's peak RSS is its own):

- **weighted M-step**: `exsearch.mstep.training.make_trainer` with the `train` settings as they are
  (TRL's SFTTrainer, lean weighted loss, the configured micro-batch and accumulation);
- **plain**: `transformers.Trainer` with the standard causal-LM loss (`labels` passed to the
  model: full-vocabulary logits at every position), batches of `train.batch_size ×
  train.grad_accum` sequences right-padded to the longest, the same LoRA and bf16 setting.

Both see the same sequences per optimiser step. Tokens/s counts the examples' real tokens
(no padding) over the wall time of `trainer.train()`. The last line is
`mstep_vs_plain: <weighted tokens/s ÷ plain tokens/s>`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_examples(model_dir: str, n: int) -> list[dict]:
    """`n` encoded warm-up examples (weight 1), as the warmup stage would train on them."""
    from transformers import AutoTokenizer

    from exsearch.agent import WarmupShape, build_trajectories
    from exsearch.checkpoints import ensure_pad_token
    from exsearch.config import load_params
    from exsearch.data import read_questions
    from exsearch.mstep import encode_examples
    from exsearch.retrieval import load_retriever

    params = load_params(ROOT / "params.yaml")
    questions = read_questions(ROOT / "data/prepared/train.jsonl")
    questions = random.Random(params.seed).sample(
        [q for q in questions if q.extra.get("support")], n
    )
    retriever = load_retriever(ROOT / "data/index")
    shape = WarmupShape(
        top_k=params.agent.top_k,
        passage_max_words=params.agent.passage_max_words,
        max_steps=params.agent.max_steps,
        record_max_words=params.warmup.record_max_words,
        first_search=params.warmup.first_search,
    )
    trajectories, _ = build_trajectories(questions, retriever, retriever.iter_passages(), shape)
    tok = ensure_pad_token(AutoTokenizer.from_pretrained(model_dir))
    data, _ = encode_examples(
        tok,
        [{"messages": t.messages, "weight": 1.0} for t in trajectories],
        params.train.max_length,
        progress=False,
    )
    return data


def _load(model_dir: str, cfg):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exsearch.checkpoints import ensure_pad_token, with_lora

    tok = ensure_pad_token(AutoTokenizer.from_pretrained(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return (with_lora(model, cfg) if cfg.lora else model), tok


def run_weighted(model_dir: str, data: list[dict], queue) -> None:
    """The project's M-step, as `train_weighted` runs it."""
    from transformers import set_seed

    from exsearch.config import load_params
    from exsearch.mstep import make_trainer

    cfg = load_params(ROOT / "params.yaml").train.model_copy(update={"epochs": 1.0})
    set_seed(cfg.seed)
    model, tok = _load(model_dir, cfg)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = make_trainer(model, tok, data, cfg, scratch, progress=False)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    queue.put((seconds, trainer.state.global_step, _peak_rss()))


def run_plain(model_dir: str, data: list[dict], queue) -> None:
    """transformers.Trainer, standard causal-LM loss, padded batches of the same sequences."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from exsearch.checkpoints import autocast_bf16
    from exsearch.config import load_params

    cfg = load_params(ROOT / "params.yaml").train
    set_seed(cfg.seed)
    model, tok = _load(model_dir, cfg)
    rows = [{"input_ids": d["input_ids"], "labels": d["labels"]} for d in data]
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=cfg.batch_size * cfg.grad_accum,
            learning_rate=cfg.learning_rate,
            num_train_epochs=1.0,
            lr_scheduler_type=cfg.lr_scheduler,
            bf16=autocast_bf16(cfg.bf16),
            seed=cfg.seed,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
        )
        collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    queue.put((seconds, trainer.state.global_step, _peak_rss()))


def _peak_rss() -> float:
    """This process's peak resident memory in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(target, model_dir: str, data: list[dict]) -> tuple[float, int, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(model_dir, data, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=str(ROOT / "models/base"), help="model to train")
    p.add_argument("--examples", type=int, default=24, help="warm-up examples (one epoch)")
    p.add_argument("--repeats", type=int, default=1, help="alternating runs of each contender")
    args = p.parse_args(argv)

    data = build_examples(args.model, args.examples)
    tokens = sum(len(d["input_ids"]) for d in data)
    labelled = sum(sum(t != -100 for t in d["labels"]) for d in data)
    print(
        f"{len(data)} warm-up examples, {tokens} tokens ({labelled / tokens:.0%} trained), "
        f"mean {tokens / len(data):.0f} and max {max(len(d['input_ids']) for d in data)} tokens"
    )
    results: dict[str, list[tuple[float, int, float]]] = {"weighted": [], "plain": []}
    for _ in range(args.repeats):
        for name, target in (("weighted", run_weighted), ("plain", run_plain)):
            seconds, steps, rss = measure(target, args.model, data)
            results[name].append((seconds, steps, rss))
            print(
                f"{name:>8}: {steps} steps in {seconds:.1f} s, {tokens / seconds:.1f} tokens/s, "
                f"peak RSS {rss:.2f} GiB",
                flush=True,
            )
    best = {name: min(r[0] for r in runs) for name, runs in results.items()}
    rss = {name: max(r[2] for r in runs) for name, runs in results.items()}
    print(
        f"weighted M-step: {tokens / best['weighted']:.1f} tokens/s, peak RSS {rss['weighted']:.2f} GiB"
    )
    print(
        f"plain Trainer:   {tokens / best['plain']:.1f} tokens/s, peak RSS {rss['plain']:.2f} GiB"
    )
    print(f"mstep_vs_plain: {best['plain'] / best['weighted']:.2f}")


if __name__ == "__main__":
    main()
