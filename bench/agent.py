"""Agent loop throughput against plain batched generation and a one-at-a-time loop.

    python bench/agent.py [--model runs/iter_0/model] [--batch 16] [--serial 4]

Generated tokens per second of the agent (batch B, greedy, the hf backend with its prefix cache)
against:
(a) the ceiling: plain batched `generate` from the first prompts, the same number of sequences,
    each writing as many new tokens as the agent wrote per trajectory in all turns, with no
    stop strings: what the model alone does on this machine. The agent also has to read the
    passages it retrieves (prompt processing); the ratio counts that against it;
(a') plain batched `generate` over the prompts the agent built, one call per agent round with
    that round's token limit, each prompt encoded in full: the loop without its cache;
(b) the same agent run on each question alone (batch 1), on the first `--serial` questions;
and the agent with the prefix cache turned off (`generation.prefix_cache_tokens: 0`).
Prints the ratios and the peak RSS; the last line is `agent_vs_plain: X` for (a). Needs the
prepared data and index (`dvc repro index`) and a model directory (default: the warmed-up
runs/iter_0/model if present, else runs/base/model).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from exsearch import io, prompts
from exsearch.agent import Sampling, SearchAgent
from exsearch.config import AgentConfig, GenerationConfig, ModelConfig
from exsearch.hf_backend import HFGenerator
from exsearch.retrieval import BM25Retriever
from exsearch.schema import Question


class Recorder:
    """Passes calls through to a generator and keeps each call's prompts and token limit."""

    def __init__(self, gen: HFGenerator):
        self.gen = gen
        self.calls: list[tuple[list[str], int]] = []

    def __getattr__(self, name):
        return getattr(self.gen, name)

    def generate(self, prompts_, **kw):
        self.calls.append((list(prompts_), kw["max_new_tokens"]))
        return self.gen.generate(prompts_, **kw)


def timed_generate(gen: HFGenerator, texts: list[str], max_new_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    out = gen.generate(
        texts, max_new_tokens=max_new_tokens, stop=[], temperature=0.0, top_p=1.0, seed=0
    )
    return sum(c.n_tokens for c in out), time.perf_counter() - start


def timed_agent(agent: SearchAgent, questions: list[Question]) -> tuple[int, float, list[dict]]:
    start = time.perf_counter()
    recs = agent.run(questions, sampling=Sampling(temperature=0.0), progress=False)
    return sum(r["tokens"]["generated"] for r in recs), time.perf_counter() - start, recs


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="model directory")
    p.add_argument("--batch", type=int, default=16, help="trajectories run at once")
    p.add_argument("--serial", type=int, default=4, help="questions for the one-at-a-time loop")
    p.add_argument("--max-steps", type=int, default=3)
    args = p.parse_args()
    model_dir = args.model or next(
        (d for d in ("runs/iter_0/model", "runs/base/model") if Path(d, "config.json").is_file()),
        None,
    )
    if model_dir is None or not Path("runs/index").is_dir():
        sys.exit("needs runs/index and a model: run `dvc repro warmup` (or init_model) first")

    questions = [Question.from_dict(d) for d in io.read_jsonl("data/prepared/dev.jsonl")][
        : args.batch
    ]
    gen = HFGenerator.from_config(model_dir, ModelConfig(), GenerationConfig(batch_size=args.batch))
    # The same weights without the prefix cache: every prompt encoded in full.
    uncached = HFGenerator(gen.model, gen.tokenizer, args.batch, prefix_cache_tokens=0)
    cfg = AgentConfig(max_steps=args.max_steps, top_k=3, passage_max_words=30)
    recorder = Recorder(gen)
    agent = SearchAgent(recorder, BM25Retriever.load("runs/index"), cfg)
    agent_uncached = SearchAgent(uncached, agent.retriever, cfg)
    agent.run(questions[:2], progress=False)  # warm-up
    recorder.calls.clear()
    gen.prefix_cache.clear()

    tokens, seconds, recs = timed_agent(agent, questions)
    rounds = len(recorder.calls)
    per_traj = max(1, round(tokens / len(questions)))
    reused = gen.prefix_cache.reused_tokens / max(1, gen.prefix_cache.prompt_tokens)
    nc_tokens, nc_seconds, _ = timed_agent(agent_uncached, questions)

    same_tokens, same_seconds = 0, 0.0
    for texts, limit in recorder.calls:
        t, s_ = timed_generate(uncached, texts, limit)
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
    plain_tokens, plain_seconds = timed_generate(uncached, first, per_traj)

    serial_tokens, serial_seconds = 0, 0.0
    for q in questions[: args.serial]:
        gen.prefix_cache.clear()
        t, s, _ = timed_agent(agent, [q])
        serial_tokens += t
        serial_seconds += s

    rate = tokens / seconds
    nc_rate = nc_tokens / nc_seconds
    plain_rate = plain_tokens / plain_seconds
    same_rate = same_tokens / same_seconds
    serial_rate = serial_tokens / serial_seconds
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model: {model_dir}; {len(questions)} trajectories in {rounds} rounds")
    print(
        f"agent loop (batch {args.batch}): {tokens} tokens in {seconds:.1f}s = {rate:.1f} tok/s; "
        f"{100 * reused:.0f}% of prompt tokens taken from the prefix cache"
    )
    print(
        f"agent loop, no prefix cache: {nc_tokens} tokens in {nc_seconds:.1f}s = {nc_rate:.1f} tok/s"
    )
    print(
        f"(a) plain generate, first prompts, {per_traj} tokens each: {plain_tokens} tokens in "
        f"{plain_seconds:.1f}s = {plain_rate:.1f} tok/s"
    )
    print(
        f"(a') plain generate, the agent's prompts in full: {same_tokens} tokens in "
        f"{same_seconds:.1f}s = {same_rate:.1f} tok/s"
    )
    print(
        f"(b) one at a time ({args.serial} questions): {serial_tokens} tokens in "
        f"{serial_seconds:.1f}s = {serial_rate:.1f} tok/s"
    )
    print(f"peak RSS: {peak_mib:.0f} MiB")
    print(f"prefix_cache_speedup: {rate / nc_rate:.2f}")
    print(f"agent_vs_full_prompts: {rate / same_rate:.2f}")
    print(f"agent_vs_one_at_a_time: {rate / serial_rate:.2f}")
    print(f"agent_vs_plain: {rate / plain_rate:.2f}")


if __name__ == "__main__":
    main()
