"""The `openai` backend against a local completions server: same results as `hf`, robust HTTP."""

from __future__ import annotations

import copy
import logging
import math
import socket
from dataclasses import replace

import pytest
from completions import clean_span, same_outputs
from openai_server import FakeCompletionsServer

from exsearch import prompts as P
from exsearch.agent.loop import SearchAgent
from exsearch.checkpoints.loading import load_model
from exsearch.config.params import AgentConfig, GenerationConfig, IndexConfig, ModelConfig
from exsearch.generation import Generator, make_generator
from exsearch.generation.completions_client import ServerError
from exsearch.generation.decoding import sequence_seed
from exsearch.generation.hf import HFGenerator
from exsearch.generation.openai import OpenAIGenerator
from exsearch.retrieval import BM25Retriever
from exsearch.schema import Passage, Question, Trajectory

QUESTIONS = [
    "Which film starring Shirley Temple was released in 1945?",
    "What is the capital of France?",
    "Who wrote the radio sitcom Meet Corliss Archer?",
]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    # batch_size 1: no padding, so the in-process and the served results are bit-identical.
    return HFGenerator(*load_model(tiny_model_dir, "float32", "cpu"), batch_size=1)


@pytest.fixture(scope="module")
def prompts(hf):
    return [hf.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture
def server(hf):
    with FakeCompletionsServer(hf) as s:
        yield s


def connect(server, **kw) -> OpenAIGenerator:
    kw = {"backoff_s": 0.01, **kw}
    return OpenAIGenerator(server.gen.tokenizer, server.base_url, **kw)


@pytest.fixture
def client(server):
    with connect(server) as c:
        yield c


# ---- same results as the hf backend ------------------------------------------------------------


def test_openai_generator_implements_the_generator_protocol(client):
    assert isinstance(client, Generator)


def test_agent_trajectories_match_the_hf_backend(hf, client):
    corpus = [
        Passage("p0", "Kiss and Tell", "Kiss and Tell is a 1945 film starring Shirley Temple."),
        Passage("p1", "Paris", "Paris is the capital and most populous city of France."),
        Passage("p2", "Meet Corliss Archer", "Meet Corliss Archer was a radio sitcom."),
    ]
    retriever = BM25Retriever.build(corpus, IndexConfig())
    questions = [Question(f"q{i}", q, ["x"], "test") for i, q in enumerate(QUESTIONS)]
    cfg = AgentConfig(
        max_steps=2, max_new_tokens=16, answer_max_new_tokens=8, max_context_tokens=512
    )
    runs = [
        SearchAgent(gen, retriever, cfg).run(questions, method=m, progress=False)
        for gen in (hf, client)
        for m in ("agent", "rag")
    ]
    for local, served in ((runs[0], runs[2]), (runs[1], runs[3])):
        for a, b in zip(local, served, strict=True):
            assert a.messages == b.messages
            assert (a.prediction, a.finish_reason, a.tokens) == (
                b.prediction,
                b.finish_reason,
                b.tokens,
            )
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_seeded_sampling_matches_the_hf_backend(hf, client, prompts):
    kw = dict(max_new_tokens=12, stop=[P.SEARCH_CLOSE], temperature=1.0, top_p=0.9, seed=7)
    same_outputs(client.generate(prompts, **kw), hf.generate(prompts, **kw), logprob_abs=1e-4)
    other = client.generate(prompts, **{**kw, "seed": 8})
    assert [c.text for c in other] != [c.text for c in hf.generate(prompts, **kw)]


def test_each_prompt_is_one_request_with_its_own_sequence_seed(server, client, prompts):
    client.generate(prompts, max_new_tokens=2, stop=["</search>"], temperature=0.7, seed=5)
    bodies = sorted(server.bodies, key=lambda b: prompts.index(b["prompt"]))
    assert [b["seed"] for b in bodies] == [sequence_seed(5, i) for i in range(len(prompts))]
    assert all(
        (b["model"], b["max_tokens"], b["stop"], b["logprobs"], b["temperature"])
        == ("tiny", 2, ["</search>"], 1, 0.7)
        for b in bodies
    )
    server.bodies.clear()
    client.generate(prompts[:1], max_new_tokens=2)
    assert "seed" not in server.bodies[0] and "stop" not in server.bodies[0]  # greedy, no stops


@pytest.mark.parametrize("dialect", ["vllm", "bare", "keep"])
def test_stop_string_is_kept_in_the_text_like_the_hf_backend(hf, server, client, prompts, dialect):
    server.stop_dialect = dialect
    full = hf.generate(prompts[:1], max_new_tokens=24)[0]
    stop = clean_span(full.text, 8, 3)
    kw = dict(max_new_tokens=24, stop=["unused-stop", stop])
    [got] = client.generate(prompts[:1], **kw)
    same_outputs([got], hf.generate(prompts[:1], **kw), logprob_abs=1e-4)
    assert (got.finish, got.stop) == ("stop", stop) and got.text.endswith(stop)


@pytest.mark.parametrize("dialect", ["vllm", "bare"])
def test_eos_ends_a_completion_without_a_stop_string(hf, prompts, dialect):
    generated = hf.generate(prompts[:1], max_new_tokens=10)[0]
    ids = hf.tokenizer(generated.text, add_special_tokens=False)["input_ids"]
    patched = copy.deepcopy(hf.model)
    patched.generation_config.eos_token_id = ids[3]  # a token the model emits: "EOS" for it
    local = HFGenerator(patched, hf.tokenizer, batch_size=1)
    with FakeCompletionsServer(local) as server, connect(server) as client:
        server.stop_dialect = dialect
        [got] = client.generate(prompts[:1], max_new_tokens=10, stop=["zzz"])
    same_outputs(
        [got], local.generate(prompts[:1], max_new_tokens=10, stop=["zzz"]), logprob_abs=1e-4
    )
    assert (got.finish, got.stop) == ("stop", None)


def test_max_new_tokens_gives_finish_length(hf, client, prompts):
    out = client.generate(prompts, max_new_tokens=3, stop=["never-generated-zz"])
    assert all((c.finish, c.stop, c.n_tokens) == ("length", None, 3) for c in out)
    same_outputs(
        out, hf.generate(prompts, max_new_tokens=3, stop=["never-generated-zz"]), logprob_abs=1e-4
    )


def chat(gold: str, n_passages: int) -> Trajectory:
    docs = P.documents_turn(
        [f"[{i}] Title: City Content: founded by John." for i in range(n_passages)]
    )
    return Trajectory(
        qid=f"q{n_passages}",
        answers=[gold],
        messages=[
            {"role": "system", "content": P.SYSTEM_PROMPT},
            {"role": "user", "content": P.question_turn("Who founded the city?")},
            {"role": "assistant", "content": P.action_turn(think="who", query="city founder")},
            {"role": "user", "content": docs},
            {"role": "assistant", "content": P.action_turn(record="John", think="done")},
            {"role": "user", "content": P.answer_request("Who founded the city?")},
            {"role": "assistant", "content": P.answer_turn("Paris")},
        ],
    )


@pytest.mark.parametrize("token_strings", ["decoded", "raw"])
def test_gold_answer_scores_match_the_hf_backend(hf, server, client, token_strings):
    server.token_strings = token_strings  # raw BPE symbols do not spell the text: align by count
    trajs = [chat("John Smith", 1), chat("the river 1820", 3), chat(" ", 2)]
    hf.reset()  # nothing cached: every token of each chat goes through the model
    expected = hf.gold_answer_scores(trajs, progress=False)
    got = client.gold_answer_scores(trajs, progress=False)
    assert got[:2] == pytest.approx(expected[:2], abs=1e-4)
    assert math.isnan(got[2]) and math.isnan(expected[2])
    assert got[0] != pytest.approx(got[1], abs=1e-3)


# ---- HTTP: retries, timeouts, concurrency ------------------------------------------------------


def test_transient_503s_are_retried(hf, server, client, prompts):
    server.fail_next = 2
    same_outputs(
        client.generate(prompts[:1], max_new_tokens=4),
        hf.generate(prompts[:1], max_new_tokens=4),
        logprob_abs=1e-4,
    )
    assert server.requests == 3


def test_persistent_failure_gives_up_after_max_retries(server, prompts):
    server.fail_next = 100
    with connect(server, max_retries=2) as client, pytest.raises(ServerError) as err:
        client.generate(prompts[:1], max_new_tokens=4)
    assert "after 3 attempt(s)" in str(err.value) and "HTTP 503" in str(err.value)
    assert server.requests == 3


def test_client_errors_are_not_retried_and_show_the_server_message(server, prompts):
    with connect(server, model_name="no-such-model") as client:
        with pytest.raises(ServerError, match="404.*does not exist"):
            client.generate(prompts[:1], max_new_tokens=4)
    assert server.requests == 1


def test_a_slow_server_times_out_with_a_clear_error(server, prompts):
    server.delay_s = 2.0
    with connect(server, timeout_s=0.2, max_retries=1) as client, pytest.raises(ServerError) as err:
        client.generate(prompts[:1], max_new_tokens=4)
    assert "no answer within generation.timeout_s = 0.2s" in str(err.value)
    assert "after 2 attempt(s)" in str(err.value)


def test_no_server_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    with pytest.raises(ServerError, match="cannot reach the server"):
        OpenAIGenerator(None, f"http://127.0.0.1:{port}/v1", max_retries=0)


def test_requests_in_flight_never_exceed_max_concurrency(server, prompts):
    server.delay_s = 0.1
    with connect(server, max_concurrency=3) as client:
        out = client.generate(prompts * 3, max_new_tokens=2)
    assert len(out) == 9 and server.requests == 9
    assert server.max_in_flight == 3


# ---- configuration -----------------------------------------------------------------------------


def test_make_generator_builds_the_openai_backend_from_params(tiny_model_dir, server, caplog):
    cfg = GenerationConfig(backend="openai", base_url=server.base_url, max_concurrency=2)
    with caplog.at_level(logging.WARNING, logger="exsearch.generation.openai"):
        gen = make_generator(tiny_model_dir, ModelConfig(), cfg)
    assert isinstance(gen, OpenAIGenerator)
    assert gen.model_name == "tiny"  # the one model the server lists
    assert "restart it on this checkpoint" in caplog.text  # it serves another directory
    gen.close()


def test_weigh_stage_scores_through_the_server_like_in_process(
    tiny_model_dir, server, tmp_path, monkeypatch
):
    import pandas as pd
    import yaml

    from exsearch.data.trajectories import write_trajectories
    from stages import weigh

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "iter_0").symlink_to(tiny_model_dir)
    trajs = [replace(chat("John Smith", n), sample=n, prediction="Paris") for n in (1, 2)]
    write_trajectories(tmp_path / "runs" / "iter_1" / "trajectories.jsonl", trajs)
    scores = {}
    for backend in ("hf", "openai"):
        params = {
            "prepare": {"train": [], "dev": []},
            "model": {"device": "cpu"},
            "generation": {"backend": backend, "base_url": server.base_url},
        }
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        weigh.main(["--iteration", "iter_1", "--prev", "iter_0"])
        scores[backend] = pd.read_parquet(tmp_path / "runs" / "iter_1" / "weights.parquet")["score"]
    assert server.requests == 2
    assert scores["openai"].tolist() == pytest.approx(scores["hf"].tolist(), abs=1e-4)


def test_weigh_stage_takes_the_scores_sampling_wrote_without_loading_a_model(
    tiny_model_dir, tmp_path, monkeypatch
):
    import pandas as pd
    import yaml

    from exsearch.data.trajectories import write_trajectories
    from stages import weigh

    def no_model(*args, **kwargs):
        raise AssertionError("scored trajectories need no model")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(weigh, "make_generator", no_model)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "iter_0").symlink_to(tiny_model_dir)
    trajs = [
        replace(chat("John Smith", n), sample=n, prediction="Paris", gold_score=s)
        for n, s in ((1, -0.5), (2, -2.0))
    ]
    write_trajectories(tmp_path / "runs" / "iter_1" / "trajectories.jsonl", trajs)
    params = {"prepare": {"train": [], "dev": []}, "weigh": {"scheme": "exp"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    weigh.main(["--iteration", "iter_1", "--prev", "iter_0"])
    table = pd.read_parquet(tmp_path / "runs" / "iter_1" / "weights.parquet")
    assert table["score"].tolist() == [-0.5, -2.0]
    assert table["weight"].tolist() == pytest.approx([4 * math.exp(-0.5), 4 * math.exp(-2.0)])
