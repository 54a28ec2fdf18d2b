"""Agent loop throughput against plain batched generation and a one-at-a-time loop.

    python bench/agent.py [--model models/iter_0] [--batch 16] [--serial 4]

Generated tokens per second of the agent (batch B, greedy, the hf backend: prefix cache, rows
leave the batch when done), with the agent settings of params.yaml, against:
(a) transformers' own batched `generate` doing the same work: one call per agent round over
    the prompts the agent built, with that round's token limit and stop strings, each prompt
    encoded in full and finished rows kept in the batch. The headline (last line,
    `agent_vs_plain`) is agent / (a);
(a*) `generate` from the first prompts only, every sequence forced to as many new tokens as
    the agent wrote per trajectory in all: generation that never reads a passage. On a CPU,
    reading the retrieved passages (prompt processing) costs about as much as writing the
    answer, so this ratio stays well below 1 there;
(b) the same agent run on each question alone (batch 1), on the first `--serial` questions,
    with its prefix cache, and (b') without it;
and the agent with the prefix cache off (`generation.prefix_cache_tokens: 0`), and with each
batch's new prompt tokens encoded as one padded batch rather than in groups of similar length
(`length_groups_speedup`). Also prints the peak RSS. Needs the prepared data and index
(`dvc repro index`) and a model directory (default: the warmed-up models/iter_0 if present,
else models/base).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

from exsearch import prompts
from exsearch.agent import Decoding, SearchAgent
from exsearch.config import GenerationConfig, load_params
from exsearch.data import read_questions
from exsearch.generation.hf import HFGenerator
from exsearch.retrieval import load_retriever
from exsearch.schema import Question, Trajectory


class Recorder:
    """Passes calls through to a generator and keeps each call's prompts and token limit."""

    def __init__(self, gen: HFGenerator):
        self.gen = gen
        self.calls: list[tuple[list[str], int, list[str]]] = []

    def __getattr__(self, name):
        return getattr(self.gen, name)

    def generate(self, prompts_, **kw):
        self.calls.append((list(prompts_), kw["max_new_tokens"], list(kw["stop"])))
        return self.gen.generate(prompts_, **kw)


def timed_plain_generate(
    gen: HFGenerator, texts: list[str], n: int, stop: list[str] | None = None
) -> tuple[int, float]:
    """transformers' own batched greedy `generate` (no prefix reuse, finished rows stay).

    With `stop`, rows end at a stop string, EOS or `n` tokens, as an agent turn does; without,
    every row is forced to exactly `n` new tokens.
    """
    tok, model = gen.tokenizer, gen.model
    tok.padding_side = "left"
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(gen.device)
    extra = {"stop_strings": stop, "tokenizer": tok} if stop else {"min_new_tokens": n}
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=n,
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            pad_token_id=gen.pad_id,
            **extra,
        )
    seconds = time.perf_counter() - start
    new = out[:, enc.input_ids.shape[1] :]
    return int((new != gen.pad_id).sum()) if stop else new.numel(), seconds


def timed_agent(
    agent: SearchAgent, questions: list[Question]
) -> tuple[int, float, list[Trajectory]]:
    start = time.perf_counter()
    recs = agent.run(questions, decoding=Decoding(temperature=0.0), progress=False)
    return sum(r.tokens.generated for r in recs), time.perf_counter() - start, recs


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="model directory")
    p.add_argument("--batch", type=int, default=16, help="trajectories run at once")
    p.add_argument("--serial", type=int, default=4, help="questions for the one-at-a-time loop")
    p.add_argument("--params", default="params.yaml", help="agent and model settings")
    args = p.parse_args()
    params = load_params(args.params)
    model_dir = args.model or next(
        (d for d in ("models/iter_0", "models/base") if Path(d, "config.json").is_file()),
        None,
    )
    if model_dir is None or not Path("data/index").is_dir():
        sys.exit("needs data/index and a model: run `dvc repro warmup` (or init_model) first")

    questions = read_questions("data/prepared/dev.jsonl")[: args.batch]
    gen_cfg = GenerationConfig(batch_size=args.batch)
    gen = HFGenerator.from_config(model_dir, params.model, gen_cfg)
    # The same weights without the prefix cache: every prompt encoded in full.
    uncached = HFGenerator(gen.model, gen.tokenizer, args.batch, prefix_cache_tokens=0)
    cfg = params.agent
    recorder = Recorder(gen)
    agent = SearchAgent(recorder, load_retriever("data/index"), cfg)
    agent_uncached = SearchAgent(uncached, agent.retriever, cfg)
    # The same weights encoding each batch's new tokens as one padded batch (no length groups).
    padded = HFGenerator(gen.model, gen.tokenizer, args.batch, group_overhead=10**9)
    agent_padded = SearchAgent(padded, agent.retriever, cfg)
    agent.run(questions[:2], progress=False)  # warm-up
    recorder.calls.clear()
    gen.prefix_cache.clear()

    tokens, seconds, recs = timed_agent(agent, questions)
    rounds = len(recorder.calls)
    per_traj = max(1, round(tokens / len(questions)))
    reused = gen.prefix_cache.reused_tokens / max(1, gen.prefix_cache.prompt_tokens)
    nc_tokens, nc_seconds, _ = timed_agent(agent_uncached, questions)
    pad_tokens, pad_seconds, _ = timed_agent(agent_padded, questions)

    same_tokens, same_seconds = 0, 0.0
    for texts, limit, stop in recorder.calls:
        t, s_ = timed_plain_generate(gen, texts, limit, stop)
        same_tokens += t
        same_seconds += s_

    first = [
        gen.chat_prompt(
            [
                {"role": "system", "content": prompts.SYSTEM_PROMPT},
                {"role": "user", "content": prompts.question_turn(q.question)},
            ]
        )
        for q in questions
    ]
    first_tokens, first_seconds = timed_plain_generate(gen, first, per_traj)

    serial_tokens, serial_seconds = 0, 0.0
    naive_tokens, naive_seconds = 0, 0.0
    for q in questions[: args.serial]:
        gen.prefix_cache.clear()
        t, s, _ = timed_agent(agent, [q])
        serial_tokens += t
        serial_seconds += s
        t, s, _ = timed_agent(agent_uncached, [q])
        naive_tokens += t
        naive_seconds += s

    rate = tokens / seconds
    nc_rate = nc_tokens / nc_seconds
    pad_rate = pad_tokens / pad_seconds
    same_rate = same_tokens / same_seconds
    first_rate = first_tokens / first_seconds
    serial_rate = serial_tokens / serial_seconds
    naive_rate = naive_tokens / naive_seconds
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"model: {model_dir} ({params.model.dtype}); {len(questions)} trajectories in {rounds} "
        f"rounds; agent settings from {args.params}: top_k {cfg.top_k}, max_steps "
        f"{cfg.max_steps}, max_new_tokens {cfg.max_new_tokens}"
    )
    print(
        f"agent loop (batch {args.batch}): {tokens} tokens in {seconds:.1f}s = {rate:.1f} tok/s; "
        f"{100 * reused:.0f}% of prompt tokens taken from the prefix cache"
    )
    print(f"  same, no prefix cache: {nc_tokens} tokens in {nc_seconds:.1f}s = {nc_rate:.1f} tok/s")
    print(
        f"  same, new tokens as one padded batch: {pad_tokens} tokens in {pad_seconds:.1f}s "
        f"= {pad_rate:.1f} tok/s"
    )
    print(
        f"(a) plain generate, the agent's prompts, limits and stops: {same_tokens} tokens in "
        f"{same_seconds:.1f}s = {same_rate:.1f} tok/s"
    )
    print(
        f"(a*) plain generate, first prompts only, {per_traj} tokens each: {first_tokens} "
        f"tokens in {first_seconds:.1f}s = {first_rate:.1f} tok/s"
    )
    print(
        f"(b) one at a time ({args.serial} questions): {serial_tokens} tokens in "
        f"{serial_seconds:.1f}s = {serial_rate:.1f} tok/s"
    )
    print(
        f"(b') one at a time, prefix cache off: {naive_tokens} tokens in {naive_seconds:.1f}s "
        f"= {naive_rate:.1f} tok/s"
    )
    print(f"peak RSS: {peak_mib:.0f} MiB")
    print(f"prefix_cache_speedup: {rate / nc_rate:.2f}")
    print(f"length_groups_speedup: {rate / pad_rate:.2f}")
    print(f"agent_vs_plain_first_prompts: {rate / first_rate:.2f}")
    print(f"agent_vs_one_at_a_time_no_cache: {rate / naive_rate:.2f}")
    print(f"agent_vs_one_at_a_time: {rate / serial_rate:.2f}")
    print(f"agent_vs_plain: {rate / same_rate:.2f}")


if __name__ == "__main__":
    main()
