"""The agent on the `hf` backend against the same agent on llama.cpp's server (`openai` backend).

    python bench/llamacpp.py [--questions 16] [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf]
                             [--server-bin PATH/llama-server --parallel 16]

Both run the agent of params.yaml, greedy, on the first `--questions` dev questions, with the
same retriever, prompts, stops and token limits; only the engine differs:

- `hf`: this project's decoding loop (batch = `--questions`, prefix cache, rows leave the batch
  when done) on the model the GGUF holds, loaded by transformers as the pipeline loads it
  (`--model`, default models/base: the default GGUF dequantised, in `model.dtype`);
- `llama.cpp`: the server on the GGUF itself, started on 127.0.0.1 by this script and stopped
  after. `--server-bin` runs llama.cpp's own `llama-server` (continuous batching over
  `--parallel` slots, prompt cache); without it, llama-cpp-python's server
  (`python -m llama_cpp.server`, one request at a time, reusing the previous request's
  keys/values), from `--server-python` (default: this interpreter).

Each engine answers two questions first (warm-up, not timed). Prints each one's generated
tokens/s, how many final answers agree and both F1 against the gold answers, the server's
command line, and last `agent_vs_llamacpp: <hf tokens/s ÷ llama.cpp tokens/s>` (> 1: the hf
backend is faster). The default GGUF is 4-bit (Q4_1) and llama.cpp computes with those 4-bit
weights and 8-bit activations, while `hf` runs the dequantised weights in float32: answers can
differ for that reason alone; `--gguf` takes an f16 GGUF of the same checkpoint to compare
like with like.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from exsearch.agent import Decoding, SearchAgent
from exsearch.config import GenerationConfig, load_params
from exsearch.data import read_questions
from exsearch.generation import make_generator
from exsearch.metrics import f1_score
from exsearch.retrieval import load_retriever
from exsearch.schema import Question, Trajectory


@dataclass
class Run:
    """One engine's timed agent run."""

    engine: str
    tokens: int
    seconds: float
    trajectories: list[Trajectory]

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    def f1(self) -> float:
        scores = [f1_score(t.prediction or "", t.answers) for t in self.trajectories]
        return 100 * sum(scores) / len(scores)

    def __str__(self) -> str:
        return (
            f"{self.engine}: {self.tokens} tokens in {self.seconds:.1f}s = {self.rate:.1f} tok/s; "
            f"F1 {self.f1():.1f}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(args: argparse.Namespace, port: int) -> list[str]:
    """The llama.cpp server's command line: llama-server's, or llama-cpp-python's."""
    threads = str(args.threads)
    if args.server_bin:
        return [
            args.server_bin,
            *("-m", str(args.gguf), "-a", "bench", "--host", "127.0.0.1", "--port", str(port)),
            *("-c", str(args.ctx * args.parallel), "-np", str(args.parallel), "-t", threads),
            *("-tb", threads, "--no-webui"),
        ]
    return [
        args.server_python,
        *("-m", "llama_cpp.server", "--model", str(args.gguf), "--model_alias", "bench"),
        *("--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(args.ctx)),
        *("--n_threads", threads, "--n_threads_batch", threads, "--verbose", "false"),
    ]


@contextlib.contextmanager
def llama_server(cmd: list[str], port: int, log: Path, timeout_s: float = 300) -> Iterator[str]:
    """Start a server (`cmd`, listening on `port`), yield its base URL once it lists its model.

    Its output goes to `log`, whose tail a failure to start carries. Stopped on exit. Also what
    tests/test_llama_server.py starts its servers with.
    """
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                httpx.get(f"{base_url}/models", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    tail = log.read_text()[-2000:]
                    raise RuntimeError(f"llama.cpp server exited: {tail}") from None
                if time.monotonic() > deadline:
                    why = f"llama.cpp server did not start in {timeout_s:.0f} s"
                    raise RuntimeError(why) from None
                time.sleep(0.3)
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def timed(engine: str, agent: SearchAgent, questions: list[Question]) -> Run:
    """The agent on `questions` after an untimed warm-up on two of them."""
    agent.run(questions[:2], decoding=Decoding(temperature=0.0), progress=False)
    start = time.perf_counter()
    recs = agent.run(questions, decoding=Decoding(temperature=0.0), progress=False)
    seconds = time.perf_counter() - start
    return Run(engine, sum(r.tokens.generated for r in recs), seconds, recs)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--questions", type=int, default=16, help="dev questions (= hf batch)")
    p.add_argument("--model", default="models/base", help="hf model dir (default models/base)")
    p.add_argument("--gguf", type=Path, help="GGUF to serve (default: params' model.gguf_file)")
    p.add_argument("--server-bin", help="llama.cpp's llama-server binary (else llama-cpp-python)")
    p.add_argument("--server-python", default=sys.executable, help="python with llama_cpp")
    p.add_argument("--parallel", type=int, default=16, help="llama-server slots (default 16)")
    p.add_argument("--ctx", type=int, default=8192, help="context per request (default 8192)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="server threads")
    p.add_argument("--params", default="params.yaml", help="agent and model settings")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    params = load_params(args.params)
    args.gguf = args.gguf or Path(params.model.gguf_file)
    for needed in (Path(args.model, "config.json"), args.gguf, Path("data/index")):
        if not needed.exists():
            sys.exit(f"{needed} is missing: run `dvc repro init_model index` first")
    questions = read_questions("data/prepared/dev.jsonl")[: args.questions]
    retriever = load_retriever("data/index")
    hf_cfg = GenerationConfig(batch_size=args.questions)
    hf_gen = make_generator(args.model, params.model, hf_cfg)
    dtype = str(next(hf_gen.model.parameters()).dtype).removeprefix("torch.")
    hf = timed("hf", SearchAgent(hf_gen, retriever, params.agent), questions)
    print(hf, flush=True)
    port = free_port()
    cmd = server_command(args, port)
    with llama_server(cmd, port, Path(tempfile.gettempdir()) / "exsearch_llamacpp.log") as url:
        concurrency = args.parallel if args.server_bin else 1
        served_cfg = GenerationConfig(backend="openai", base_url=url, max_concurrency=concurrency)
        with make_generator(args.model, params.model, served_cfg) as served:
            llama = timed("llama.cpp", SearchAgent(served, retriever, params.agent), questions)
    print(llama)
    same = sum(
        (a.prediction or "") == (b.prediction or "")
        for a, b in zip(hf.trajectories, llama.trajectories, strict=True)
    )
    print(f"server: {' '.join(Path(c).name if c == cmd[0] else c for c in cmd)}")
    print(
        f"model: hf {args.model} ({dtype}, {torch.get_num_threads()} threads); llama.cpp {args.gguf}"
    )
    print(f"final answers identical: {same} of {len(questions)}")
    print(f"F1 hf − llama.cpp: {hf.f1() - llama.f1():+.1f} (n={len(questions)})")
    print(f"agent_vs_llamacpp: {hf.rate / llama.rate:.2f}")


if __name__ == "__main__":
    main()
