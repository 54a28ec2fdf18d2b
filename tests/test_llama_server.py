"""The `openai` backend against a real engine: llama.cpp's server (llama-cpp-python) on 127.0.0.1
serving the bundled SmolLM2 GGUF. The hand-written fake server (tests/openai_server.py) stays for
fault injection; this checks what only a real engine can: its stops, seeds and echoed log-probs.

Slow, and skipped unless llama-cpp-python's server is installed (not in requirements.lock: it is
compiled from source, minutes on a small machine). See the README, "Serving".
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
from pathlib import Path

import pytest

from bench.llamacpp import free_port
from bench.llamacpp import llama_server as serve
from exsearch.checkpoints.loading import prepare_tokenizer
from exsearch.config.params import ModelConfig
from exsearch.generation.openai import OpenAIGenerator

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
GGUF = Path(__file__).resolve().parents[1] / ModelConfig().gguf_file
if not GGUF.is_file():
    pytest.skip(
        f"{GGUF.name} absent: run `python scripts/fetch_default_model.py`", allow_module_level=True
    )
pytestmark = pytest.mark.slow

QUESTIONS = [
    "List the numbers from 1 to 10, separated by commas.",
    "What is the capital of France?",
    "Name three colours.",
]


@contextlib.contextmanager
def llama_server():
    """A fresh llama.cpp server on the GGUF; its base URL. Log-probs of prompts need logits_all."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF)]
    cmd += ["--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--n_ctx", "2048", "--n_threads", "2", "--logits_all", "true", "--verbose", "false"]
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve(cmd, port, Path(tmp) / "server.log", timeout_s=120) as base_url,
    ):
        yield base_url


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name))


@pytest.fixture(scope="module")
def server():
    with llama_server() as url:
        yield url


def client(tokenizer, url) -> OpenAIGenerator:
    # One request at a time: the server reuses the previous request's keys/values, so the order
    # of requests is part of what determines the numbers.
    return OpenAIGenerator(tokenizer, url, max_concurrency=1, timeout_s=120, max_retries=0)


def chat(gen, question):
    return gen.chat_prompt([{"role": "user", "content": question}])


def test_the_served_model_is_found_and_generation_stops_at_a_stop_string(tokenizer, server):
    with client(tokenizer, server) as gen:
        assert gen.model_name == "smollm2"
        [done] = gen.generate([chat(gen, QUESTIONS[0])], max_new_tokens=48, stop=["5"])
        [free] = gen.generate([chat(gen, QUESTIONS[0])], max_new_tokens=48)
    assert "5" in free.text  # the stop string is there to be hit
    assert (done.finish, done.stop) == ("stop", "5")
    assert done.text.endswith("5") and done.text.count("5") == 1  # kept, nothing after it
    assert free.text.startswith(done.text[:-1])
    assert 0 < done.n_tokens < free.n_tokens
    assert done.logprob is not None and done.logprob < 0


def test_a_turn_ends_at_eos_without_the_eos_text(tokenizer, server):
    with client(tokenizer, server) as gen:
        question = "What is the capital of France? One word."
        [done] = gen.generate([chat(gen, question)], max_new_tokens=48, stop=["</search>"])
    assert done.finish == "stop" and done.stop is None
    assert "<|im_end|>" not in done.text and done.text.strip()


def test_seeds_fix_the_samples_and_other_seeds_give_other_samples(tokenizer):
    def run(url):
        with client(tokenizer, url) as gen:
            prompts = [chat(gen, q) for q in QUESTIONS[1:]]
            kw = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0}
            first = gen.generate(prompts, seed=[7, 8], **kw)
            other = gen.generate(prompts, seed=[10, 11], **kw)
        return [c.text for c in first], [c.text for c in other]

    with llama_server() as url:
        first_a, other_a = run(url)
    with llama_server() as url:  # a fresh server: no keys/values left from the first run
        first_b, other_b = run(url)
    assert first_a == first_b and other_a == other_b
    assert first_a != other_a


def test_gold_answers_are_scored_from_echoed_prompt_logprobs_like_the_local_model(
    tokenizer, server
):
    import torch
    from transformers import AutoModelForCausalLM

    from exsearch.generation.hf import HFGenerator
    from exsearch.schema import Trajectory

    trajectories = [
        Trajectory(
            qid=f"q{i}",
            answers=[answer],
            messages=[
                {"role": "system", "content": "Answer in a few words inside <answer></answer>."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": "<answer>something</answer>"},
            ],
        )
        for i, (question, answer) in enumerate(
            [("What is the capital of France?", "Paris"), ("Name a colour.", "blue and green")]
        )
    ]
    with client(tokenizer, server) as gen:
        served = gen.gold_answer_scores(trajectories, progress=False)
    model = AutoModelForCausalLM.from_pretrained(
        GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32
    ).eval()
    local = HFGenerator(model, tokenizer).gold_answer_scores(trajectories, progress=False)
    assert all(math.isfinite(s) and s < 0 for s in served)
    # Same weights; llama.cpp rounds activations to 8 bits in its matrix products.
    assert served == pytest.approx(local, abs=0.25)
    assert (served[0] > served[1]) == (local[0] > local[1])
