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
from dataclasses import dataclass
from pathlib import Path

import torch

from exsearch import prompts
from exsearch.agent import Decoding, SearchAgent
from exsearch.config import GenerationConfig, Params, load_params
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


@dataclass
class Measured:
    """Tokens generated in some seconds, and the rate they make."""

    tokens: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    def __add__(self, other: Measured) -> Measured:
        return Measured(self.tokens + other.tokens, self.seconds + other.seconds)

    def __str__(self) -> str:
        return f"{self.tokens} tokens in {self.seconds:.1f}s = {self.rate:.1f} tok/s"


@dataclass
class Results:
    """Every measured comparison, in the order `main` measures them."""

    agent: Measured
    rounds: int
    reused: float
    no_cache: Measured
    padded: Measured
    plain_same: Measured
    per_traj: int
    plain_first: Measured
    serial: Measured
    serial_no_cache: Measured


def timed_agent(
    agent: SearchAgent, questions: list[Question]
) -> tuple[int, float, list[Trajectory]]:
    start = time.perf_counter()
    recs = agent.run(questions, decoding=Decoding(temperature=0.0), progress=False)
    return sum(r.tokens.generated for r in recs), time.perf_counter() - start, recs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="model directory")
    p.add_argument("--batch", type=int, default=16, help="trajectories run at once")
    p.add_argument("--serial", type=int, default=4, help="questions for the one-at-a-time loop")
    p.add_argument("--params", default="params.yaml", help="agent and model settings")
    return p.parse_args()


def find_model_dir(model: str | None) -> str:
    """`--model`, else the warmed-up models/iter_0, else models/base; exits if there is none."""
    model_dir = model or next(
        (d for d in ("models/iter_0", "models/base") if Path(d, "config.json").is_file()),
        None,
    )
    if model_dir is None or not Path("data/index").is_dir():
        sys.exit("needs data/index and a model: run `dvc repro warmup` (or init_model) first")
    return model_dir


def measure_agent(
    agent: SearchAgent, recorder: Recorder, gen: HFGenerator, questions: list[Question]
) -> tuple[Measured, int, float]:
    """The agent loop (with the prefix cache), its rounds, and the share of reused prompt tokens."""
    tokens, seconds, _ = timed_agent(agent, questions)
    reused = gen.prefix_cache.reused_tokens / max(1, gen.prefix_cache.prompt_tokens)
    return Measured(tokens, seconds), len(recorder.calls), reused


def measure_variant(agent: SearchAgent, questions: list[Question]) -> Measured:
    """The same agent loop on another generator (prefix cache off, or one padded batch)."""
    tokens, seconds, _ = timed_agent(agent, questions)
    return Measured(tokens, seconds)


def measure_plain_same(gen: HFGenerator, calls: list[tuple[list[str], int, list[str]]]) -> Measured:
    """(a): plain `generate` once per agent round, with that round's prompts, limit and stops."""
    total = Measured(0, 0.0)
    for texts, limit, stop in calls:
        total += Measured(*timed_plain_generate(gen, texts, limit, stop))
    return total


def measure_plain_first(gen: HFGenerator, questions: list[Question], per_traj: int) -> Measured:
    """(a*): plain `generate` from the first prompts only, `per_traj` tokens forced per row."""
    first = [
        gen.chat_prompt(
            [
                {"role": "system", "content": prompts.SYSTEM_PROMPT},
                {"role": "user", "content": prompts.question_turn(q.question)},
            ]
        )
        for q in questions
    ]
    return Measured(*timed_plain_generate(gen, first, per_traj))


def measure_one_at_a_time(
    gen: HFGenerator, agent: SearchAgent, agent_uncached: SearchAgent, questions: list[Question]
) -> tuple[Measured, Measured]:
    """(b) and (b'): the agent on each question alone, with its prefix cache and without."""
    serial, naive = Measured(0, 0.0), Measured(0, 0.0)
    for q in questions:
        gen.prefix_cache.clear()
        t, s, _ = timed_agent(agent, [q])
        serial += Measured(t, s)
        t, s, _ = timed_agent(agent_uncached, [q])
        naive += Measured(t, s)
    return serial, naive


def print_results(
    r: Results, args: argparse.Namespace, model_dir: str, n: int, params: Params
) -> None:
    """The comparisons, then one ratio per line; `agent_vs_plain` (the headline) last."""
    cfg = params.agent
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"model: {model_dir} ({params.model.dtype}); {n} trajectories in {r.rounds} "
        f"rounds; agent settings from {args.params}: top_k {cfg.top_k}, max_steps "
        f"{cfg.max_steps}, max_new_tokens {cfg.max_new_tokens}"
    )
    print(
        f"agent loop (batch {args.batch}): {r.agent}; "
        f"{100 * r.reused:.0f}% of prompt tokens taken from the prefix cache"
    )
    print(f"  same, no prefix cache: {r.no_cache}")
    print(f"  same, new tokens as one padded batch: {r.padded}")
    print(f"(a) plain generate, the agent's prompts, limits and stops: {r.plain_same}")
    print(f"(a*) plain generate, first prompts only, {r.per_traj} tokens each: {r.plain_first}")
    print(f"(b) one at a time ({args.serial} questions): {r.serial}")
    print(f"(b') one at a time, prefix cache off: {r.serial_no_cache}")
    print(f"peak RSS: {peak_mib:.0f} MiB")
    rate = r.agent.rate
    print(f"prefix_cache_speedup: {rate / r.no_cache.rate:.2f}")
    print(f"length_groups_speedup: {rate / r.padded.rate:.2f}")
    print(f"agent_vs_plain_first_prompts: {rate / r.plain_first.rate:.2f}")
    print(f"agent_vs_one_at_a_time_no_cache: {rate / r.serial_no_cache.rate:.2f}")
    print(f"agent_vs_one_at_a_time: {rate / r.serial.rate:.2f}")
    print(f"agent_vs_plain: {rate / r.plain_same.rate:.2f}")


def build_agents(
    args: argparse.Namespace, params: Params, model_dir: str
) -> tuple[HFGenerator, Recorder, SearchAgent, SearchAgent, SearchAgent]:
    """The generator, its recorder, and the agent on it, without its prefix cache and padded."""
    gen = HFGenerator.from_config(model_dir, params.model, GenerationConfig(batch_size=args.batch))
    # The same weights without the prefix cache: every prompt encoded in full.
    uncached = HFGenerator(gen.model, gen.tokenizer, args.batch, prefix_cache_tokens=0)
    cfg = params.agent
    recorder = Recorder(gen)
    agent = SearchAgent(recorder, load_retriever("data/index"), cfg)
    agent_uncached = SearchAgent(uncached, agent.retriever, cfg)
    # The same weights encoding each batch's new tokens as one padded batch (no length groups).
    padded = HFGenerator(gen.model, gen.tokenizer, args.batch, group_overhead=10**9)
    agent_padded = SearchAgent(padded, agent.retriever, cfg)
    return gen, recorder, agent, agent_uncached, agent_padded


def main() -> None:
    args = parse_args()
    params = load_params(args.params)
    model_dir = find_model_dir(args.model)
    questions = read_questions("data/prepared/dev.jsonl")[: args.batch]
    gen, recorder, agent, agent_uncached, agent_padded = build_agents(args, params, model_dir)
    agent.run(questions[:2], progress=False)  # warm-up
    recorder.calls.clear()
    gen.prefix_cache.clear()

    # Measured in this order: (a) replays the rounds the first run recorded, and (b) records more.
    measured, rounds, reused = measure_agent(agent, recorder, gen, questions)
    per_traj = max(1, round(measured.tokens / len(questions)))
    no_cache = measure_variant(agent_uncached, questions)
    padded = measure_variant(agent_padded, questions)
    plain_same = measure_plain_same(gen, recorder.calls)
    plain_first = measure_plain_first(gen, questions, per_traj)
    serial, naive = measure_one_at_a_time(gen, agent, agent_uncached, questions[: args.serial])
    results = Results(
        agent=measured,
        rounds=rounds,
        reused=reused,
        no_cache=no_cache,
        padded=padded,
        plain_same=plain_same,
        per_traj=per_traj,
        plain_first=plain_first,
        serial=serial,
        serial_no_cache=naive,
    )
    print_results(results, args, model_dir, len(questions), params)


if __name__ == "__main__":
    main()
