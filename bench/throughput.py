"""Generation and training throughput of one model on CPU and, where there is one, a CUDA GPU.

    python bench/throughput.py --model models/base [--gpu-batch 64] [--cpu-batch 4]

Generation: greedy `HFGenerator.generate` over chat prompts built from the bundled dev
questions, counting generated tokens. Training: LoRA forward + backward + AdamW steps on
fixed-length sequences (the M-step's inner loop), counting tokens. The CPU runs a small slice so
the script stays short; ratios compare tokens/s, which are per-token rates on both sides.
The last line is `gpu_generation_speedup: X` (or `cpu_generation_tokens_per_s: X` without a GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from exsearch import prompts
from exsearch.checkpoints import load_model
from exsearch.generation.hf import HFGenerator

DEV = Path("data/raw/hotpotqa/dev_subsampled.odd250.jsonl")


def questions(n: int) -> list[str]:
    with DEV.open() as f:
        return [json.loads(line)["question_text"] for _, line in zip(range(n), f, strict=False)]


def generation_rate(model_dir: str, device: str, dtype: str, batch: int, new_tokens: int) -> dict:
    model, tok = load_model(model_dir, dtype, device)
    gen = HFGenerator(model, tok, batch_size=batch)
    texts = [
        gen.chat_prompt(
            [
                {"role": "system", "content": prompts.SYSTEM_PROMPT},
                {"role": "user", "content": prompts.question_turn(q)},
            ]
        )
        for q in questions(batch)
    ]
    gen.generate(texts[:2], max_new_tokens=4, stop=[], temperature=0.0, top_p=1.0, seed=0)
    _sync(device)
    start = time.perf_counter()
    out = gen.generate(
        texts, max_new_tokens=new_tokens, stop=[], temperature=0.0, top_p=1.0, seed=0
    )
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = sum(c.n_tokens for c in out)
    return {
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def training_rate(
    model_dir: str, device: str, bf16: bool, batch: int, length: int, steps: int
) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from exsearch.checkpoints import LORA_TARGETS

    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules=list(LORA_TARGETS))
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=gen).to(device)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocation, kernels
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = batch * length * steps
    return {
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="models/base", help="saved model directory")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence")
    p.add_argument("--cpu-batch", type=int, default=4, help="sequences per batch on the CPU")
    p.add_argument("--gpu-batch", type=int, default=64, help="sequences per batch on the GPU")
    p.add_argument("--train-length", type=int, default=512, help="training sequence length")
    p.add_argument("--cpu-train-steps", type=int, default=2)
    p.add_argument("--gpu-train-steps", type=int, default=10)
    args = p.parse_args()

    results = {
        "cpu": {
            "generation": generation_rate(
                args.model, "cpu", "float32", args.cpu_batch, args.new_tokens
            ),
            "training": training_rate(
                args.model, "cpu", False, 2, args.train_length, args.cpu_train_steps
            ),
        }
    }
    if torch.cuda.is_available():
        results["gpu"] = {
            "device": torch.cuda.get_device_name(0),
            "generation": generation_rate(
                args.model, "cuda", "bfloat16", args.gpu_batch, args.new_tokens
            ),
            "training": training_rate(
                args.model, "cuda", True, 16, args.train_length, args.gpu_train_steps
            ),
        }
    print(json.dumps(results, indent=2))
    cpu = results["cpu"]
    print(
        f"cpu generation tokens/s (batch {args.cpu_batch}, fp32): {cpu['generation']['tokens_per_s']}"
    )
    print(
        f"cpu training tokens/s (LoRA, batch 2 x {args.train_length}, fp32): {cpu['training']['tokens_per_s']}"
    )
    if "gpu" not in results:
        print("no CUDA GPU: GPU figures skipped")
        print(f"cpu_generation_tokens_per_s: {cpu['generation']['tokens_per_s']}")
        return
    gpu = results["gpu"]
    train_ratio = gpu["training"]["tokens_per_s"] / cpu["training"]["tokens_per_s"]
    gen_ratio = gpu["generation"]["tokens_per_s"] / cpu["generation"]["tokens_per_s"]
    print(
        f"gpu ({gpu['device']}) generation tokens/s (batch {args.gpu_batch}, bf16): {gpu['generation']['tokens_per_s']}"
    )
    print(
        f"gpu training tokens/s (LoRA, batch 16 x {args.train_length}, bf16): {gpu['training']['tokens_per_s']}"
    )
    print(f"gpu_training_speedup: {train_ratio:.1f}")
    print(f"gpu_generation_speedup: {gen_ratio:.1f}")


if __name__ == "__main__":
    main()
