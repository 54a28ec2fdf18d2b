"""Agent loop throughput against plain batched generation and a one-at-a-time loop.

    python bench/agent.py [--model runs/iter_0/model] [--batch 16] [--serial 4]

Generated tokens per second of the agent (batch B) against:
(a) the ceiling: plain batched `generate` over the same sequences and the same prompts, one call
    per agent round with that round's token limit and no stop strings: what the model alone does
    with the contexts the agent built, so the ratio is the loop's own overhead (retrieval,
    parsing, prompt building, sequences leaving the batch);
(a') plain batched `generate` from the first prompts only, for as many new tokens per sequence as
    the agent wrote in all: this leaves out reading the passages, so on a CPU, where prompt
    processing dominates, it shows what the documents cost rather than the loop's overhead;
(b) the same agent run on each question alone (batch 1), on the first `--serial` questions.
The ratios and the peak RSS are printed; the last line is `agent_vs_plain: X` for (a). Needs the
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
from exsearch.generation import HFGenerator
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
    cfg = AgentConfig(max_steps=args.max_steps, top_k=3, passage_max_words=30)
    recorder = Recorder(gen)
    agent = SearchAgent(recorder, BM25Retriever.load("runs/index"), cfg)
    agent.run(questions[:2], progress=False)  # warm-up
    recorder.calls.clear()

    tokens, seconds, recs = timed_agent(agent, questions)
    rounds = len(recorder.calls)
    per_traj = max(1, round(tokens / len(questions)))

    plain_tokens, plain_seconds = 0, 0.0
    for texts, limit in recorder.calls:
        t, s_ = timed_generate(gen, texts, limit)
        plain_tokens += t
        plain_seconds += s_

    first = [
        gen.chat_prompt(
            [
                {"role": "system", "content": prompts.SYSTEM_PROMPT},
                {"role": "user", "content": prompts.question_turn(q.question)},
            ]
        )
        for q in questions
    ]
    first_tokens, first_seconds = timed_generate(gen, first, per_traj)

    serial_tokens, serial_seconds = 0, 0.0
    for q in questions[: args.serial]:
        t, s, _ = timed_agent(agent, [q])
        serial_tokens += t
        serial_seconds += s

    rate = tokens / seconds
    plain_rate = plain_tokens / plain_seconds
    first_rate = first_tokens / first_seconds
    serial_rate = serial_tokens / serial_seconds
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model: {model_dir}; {len(questions)} trajectories in {rounds} rounds")
    print(f"agent loop (batch {args.batch}): {tokens} tokens in {seconds:.1f}s = {rate:.1f} tok/s")
    print(
        f"(a) plain generate, same prompts: {plain_tokens} tokens in {plain_seconds:.1f}s = {plain_rate:.1f} tok/s"
    )
    print(
        f"(a') plain generate, first prompts only: {first_tokens} tokens in {first_seconds:.1f}s = {first_rate:.1f} tok/s"
    )
    print(
        f"one at a time ({args.serial} questions): {serial_tokens} tokens in {serial_seconds:.1f}s = {serial_rate:.1f} tok/s"
    )
    print(f"peak RSS: {peak_mib:.0f} MiB")
    print(f"agent_vs_plain_first_prompts: {rate / first_rate:.2f}")
    print(f"agent_vs_one_at_a_time: {rate / serial_rate:.2f}")
    print(f"agent_vs_plain: {rate / plain_rate:.2f}")


if __name__ == "__main__":
    main()
