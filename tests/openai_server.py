"""A local stand-in for an OpenAI-compatible completions server (vLLM-like), over `HFGenerator`.

Implements `GET /v1/models` and the subset of `POST /v1/completions` the `openai` backend
uses: greedy or seeded sampling per request, stop strings stripped from the text as real servers
do (`finish_reason`, vLLM's `stop_reason`), token log-probs, and `echo` scoring (prompt-token
log-probs with text offsets). Knobs let tests inject failures, delays and other server dialects.

    with FakeCompletionsServer(HFGenerator(model, tokenizer, batch_size=1)) as server:
        server.base_url  # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from exsearch.generation.hf import HFGenerator


class FakeCompletionsServer:
    """Serves one model in a background thread on 127.0.0.1 (a free port).

    Attributes tests may set or read:
        fail_next: answer the next N completion requests with `fail_status` (then serve).
        delay_s: sleep this long in each completion request before answering.
        stop_dialect: 'vllm' (strip the stop, report `stop_reason`), 'bare' (strip it, report
            nothing but the generated tokens) or 'keep' (leave it in the text).
        token_strings: 'decoded' (each token's text) or 'raw' (BPE symbols, as older vLLM).
        requests, max_in_flight: completion requests received; most handled at once.
        bodies: every completion request body, in arrival order.
    """

    def __init__(self, generator: HFGenerator, model_name: str = "tiny", root: str = "tiny"):
        self.gen = generator
        self.tok = generator.tokenizer
        self.model_name, self.root = model_name, root
        self.fail_next, self.fail_status, self.delay_s = 0, 503, 0.0
        self.stop_dialect, self.token_strings = "vllm", "decoded"
        self.requests = self.max_in_flight = self._in_flight = 0
        self.bodies: list[dict] = []
        self._lock, self._model_lock = threading.Lock(), threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeCompletionsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Cut delays short and let handlers finish: no model call may outlive the test.
        self._closing.set()
        self._httpd.shutdown()
        while self._in_flight:
            time.sleep(0.01)
        self._httpd.server_close()

    # ------------------------------------------------------------------ endpoints
    def models(self) -> tuple[int, dict]:
        return 200, {"object": "list", "data": [{"id": self.model_name, "root": self.root}]}

    def completions(self, body: dict) -> tuple[int, dict]:
        with self._lock:
            self.requests += 1
            self.bodies.append(body)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            failing = self.fail_next > 0
            self.fail_next -= failing
        try:
            self._closing.wait(self.delay_s)
            if failing or self._closing.is_set():
                return self.fail_status, {"error": {"message": "overloaded, try again"}}
            if body.get("model") != self.model_name:
                return 404, {
                    "error": {"message": f"The model `{body.get('model')}` does not exist."}
                }
            with self._model_lock:  # one forward pass at a time, as one GPU would
                choice, usage = self._echo(body) if body.get("echo") else self._generate(body)
            return 200, {"object": "text_completion", "choices": [choice], "usage": usage}
        finally:
            with self._lock:
                self._in_flight -= 1

    # ------------------------------------------------------------------ model work
    def _generate(self, body: dict) -> tuple[dict, dict]:
        stops = body.get("stop") or []
        seed = body.get("seed")
        c = self.gen.generate(
            [body["prompt"]],
            max_new_tokens=body["max_tokens"],
            stop=stops,
            temperature=body.get("temperature", 1.0),
            top_p=body.get("top_p", 1.0),
            seed=None if seed is None else [seed],
        )[0]
        text = c.text
        if c.stop and self.stop_dialect != "keep":
            text = text[: -len(c.stop)]
        # The generated tokens, re-encoded from the text (plus EOS): a test double's
        # approximation; their log-probs share the exact total evenly.
        ids = self.tok(c.text, add_special_tokens=False)["input_ids"]
        if c.finish == "stop" and c.stop is None:
            ids.append(self.tok.eos_token_id)
        tokens = self._token_strings(ids)
        choice = {
            "index": 0,
            "text": text,
            "finish_reason": c.finish,
            "logprobs": {"tokens": tokens, "token_logprobs": [c.logprob / len(ids)] * len(ids)},
        }
        if self.stop_dialect == "vllm":
            choice["stop_reason"] = c.stop
        prompt_tokens = len(self.tok(body["prompt"], add_special_tokens=False)["input_ids"])
        return choice, {"prompt_tokens": prompt_tokens, "completion_tokens": c.n_tokens}

    @torch.inference_mode()
    def _echo(self, body: dict) -> tuple[dict, dict]:
        """Prompt-token log-probs (None for the first) and one greedy token, like vLLM's echo."""
        prompt = body["prompt"]
        enc = self.tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        logits = self.gen.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        token_lps = [None] + [logits[j - 1, t].item() for j, t in enumerate(ids) if j > 0]
        nxt = int(logits[-1].argmax())
        offsets = [s for s, _ in enc["offset_mapping"]] + [len(prompt)]
        choice = {
            "index": 0,
            "text": prompt + self.tok.decode([nxt]),
            "finish_reason": "length",
            "logprobs": {
                "tokens": self._token_strings([*ids, nxt]),
                "token_logprobs": [*token_lps, logits[-1, nxt].item()],
                "text_offset": offsets,
            },
        }
        return choice, {"prompt_tokens": len(ids), "completion_tokens": 1}

    def _token_strings(self, ids: list[int]) -> list[str]:
        if self.token_strings == "raw":
            return self.tok.convert_ids_to_tokens(ids)
        return [self.tok.decode([i]) for i in ids]


def _handler(server: FakeCompletionsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._reply(*server.models()) if self.path == "/v1/models" else self._reply(404, {})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/v1/completions":
                self._reply(*server.completions(body))
            else:
                self._reply(404, {})

        def _reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
