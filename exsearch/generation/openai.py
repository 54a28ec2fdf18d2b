"""The `openai` backend: generate and score through an OpenAI-compatible completions server.

Any server speaking the legacy `/v1/completions` API works (`vllm serve`, SGLang, llama.cpp's
server); docs/serving.md shows how to run one per EM iteration. Prompts are rendered and counted
with the model's own tokenizer, loaded from the model directory, and sent as raw text, so the
trajectories have exactly the format the `hf` backend gives. Differences between servers are
smoothed over here:

- servers strip the stop string from the text, the `hf` backend keeps it: the matched stop is
  put back (from vLLM's `stop_reason`, SGLang's `matched_stop`, or else the returned tokens);
- per-sequence seeds are `sequence_seed(seed, i)`, as in `HFGenerator`, one request per prompt;
- `add_special_tokens` / `skip_special_tokens` are sent as false (vLLM and SGLang honour them)
  so the server neither adds a second BOS to the templated prompt nor hides special tokens, and
  `top_k`, `min_p`, `repetition_penalty` are sent neutral so no model default changes sampling.

Requests go through `completions_client` (retries, timeouts, at most `max_concurrency` in
flight); gold-answer scoring reads the server's echoed prompt through `echo_scoring`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from exsearch.checkpoints import prepare_tokenizer
from exsearch.config import GenerationConfig
from exsearch.generation.base import Completion
from exsearch.generation.completions_client import CompletionsClient, ServerError
from exsearch.generation.decoding import check_decoding, cut_at_stop, row_seeds
from exsearch.generation.echo_scoring import gold_logprobs, gold_span
from exsearch.prompts import encode_gold_answers
from exsearch.schema import Trajectory

log = logging.getLogger(__name__)


class OpenAIGenerator:
    """A `Generator` (and gold-answer scorer) backed by an OpenAI-compatible completions server.

    Thread-safe; one HTTP client with a connection pool sized to `max_concurrency`. Call
    `close()` (or use it as a context manager) to release the connections.
    """

    def __init__(
        self,
        tokenizer: Any,
        base_url: str,
        model_name: str | None = None,
        *,
        api_key: str | None = None,
        max_concurrency: int = 64,
        timeout_s: float = 600.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        progress_min: int = 256,
        model_path: str | Path | None = None,
    ):
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError(
                "need max_concurrency >= 1, max_retries >= 0 and timeout_s > 0, got "
                f"{max_concurrency}, {max_retries}, {timeout_s}"
            )
        self.tokenizer = tokenizer
        self.progress_min = progress_min
        self._warned_stop = False
        self.client = CompletionsClient(
            base_url,
            api_key=api_key,
            max_concurrency=max_concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
        )
        self.base_url = self.client.base_url
        self.model_name = model_name or self._served_model(model_path)

    @classmethod
    def from_config(cls, model_path: str | Path, gen_cfg: GenerationConfig) -> OpenAIGenerator:
        """Tokenizer from `model_path`; server, key and limits from the `generation` params."""
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(model_path))
        api_key = os.environ.get(gen_cfg.api_key_env) if gen_cfg.api_key_env else None
        if gen_cfg.api_key_env and not api_key:
            log.warning(
                "generation.api_key_env: $%s is not set; sending no key", gen_cfg.api_key_env
            )
        return cls(
            tokenizer,
            gen_cfg.base_url,
            gen_cfg.model_name,
            api_key=api_key,
            max_concurrency=gen_cfg.max_concurrency,
            timeout_s=gen_cfg.timeout_s,
            max_retries=gen_cfg.max_retries,
            model_path=model_path,
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- Generator protocol
    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token count of each text, without added special tokens (as in `HFGenerator`)."""
        if not texts:
            return []
        return [
            len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        ]

    def chat_prompt(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        """Render `messages` with the tokenizer's chat template."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def reset(self) -> None:
        """Nothing to forget here: whatever the server caches is its own business."""

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | Sequence[int] | None = None,
    ) -> list[Completion]:
        """Continue each prompt on the server; same contract as `HFGenerator.generate`."""
        check_decoding(max_new_tokens, temperature, top_p)
        if not prompts:
            return []
        stops = [s for s in stop if s]
        seeds = row_seeds(seed, len(prompts)) if temperature > 0 else None
        bodies = []
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {i} is empty; a prompt needs at least one token")
            body = self._body(prompt, max_tokens=max_new_tokens, temperature=temperature)
            # Neutral values for knobs a server may otherwise fill from the model's
            # generation_config.json (vLLM does) or its own defaults (llama.cpp's top_k 40,
            # min_p 0.05, repeat_penalty 1.1), as `HFGenerator` pins them too. top_k 0 is "off"
            # for both vLLM and llama.cpp; each ignores the other's repetition-penalty name.
            body.update(
                top_p=top_p,
                top_k=0,
                min_p=0.0,
                repetition_penalty=1.0,
                repeat_penalty=1.0,
                logprobs=1,
            )
            if stops:
                body["stop"] = stops
            if seeds is not None:
                body["seed"] = seeds[i]
            bodies.append(body)
        answers = self.client.post_all(bodies, "generating", len(bodies) >= self.progress_min)
        return [self._completion(a, stops) for a in answers]

    # ---------------------------------------------------------------- scoring
    def gold_answer_scores(
        self, trajectories: Sequence[Trajectory], *, progress: bool = True
    ) -> list[float]:
        """Length-normalised log-likelihood of each trajectory's gold answer, as the server sees it.

        Same definition as `HFGenerator.gold_answer_scores`: the chat with the gold answer is
        scored in one pass (`echo` + `logprobs`) and the log-probs of the tokens overlapping
        the gold string are averaged. NaN (with a warning) for an empty gold answer.
        """
        jobs, scores = [], [math.nan] * len(trajectories)
        for i, (_, positions) in enumerate(encode_gold_answers(self.tokenizer, trajectories)):
            if positions:
                jobs.append((i, len(positions), *gold_span(self.tokenizer, trajectories[i])))
        bodies = []
        for *_, text, _, _ in jobs:
            body = self._body(text, max_tokens=1, temperature=0.0)
            body.update(echo=True, logprobs=1)
            bodies.append(body)
        answers = self.client.post_all(bodies, "scoring gold answers", progress)
        served = f"model {self.model_name!r} at {self.base_url}"
        for (i, n_gold, text, a, b), answer in zip(jobs, answers, strict=True):
            lps = gold_logprobs(self.tokenizer, answer, text, a, b, n_gold, trajectories[i], served)
            scores[i] = sum(lps) / len(lps)
        return scores

    # ---------------------------------------------------------------- requests
    def _body(self, prompt: str, *, max_tokens: int, temperature: float) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "add_special_tokens": False,
            "skip_special_tokens": False,
        }

    def _served_model(self, model_path: str | Path | None) -> str:
        """The one model the server lists; warn if it was not loaded from `model_path`."""
        data = self.client.request("GET", "/models").get("data") or []
        ids = [m.get("id") for m in data]
        if len(ids) != 1:
            raise ServerError(
                f"{self.base_url}/models lists {ids}; set generation.model_name to one of them"
            )
        root = data[0].get("root")
        if model_path is not None and root and Path(root).resolve() != Path(model_path).resolve():
            log.warning(
                "the server at %s serves %s, not %s: restart it on this checkpoint "
                "(docs/serving.md) unless they are the same model",
                self.base_url,
                root,
                model_path,
            )
        return ids[0]

    # ---------------------------------------------------------------- answers → Completion
    def _completion(self, answer: dict, stops: list[str]) -> Completion:
        try:
            choice = answer["choices"][0]
            text = choice.get("text") or ""
        except (KeyError, IndexError, TypeError):
            raise ServerError(
                f"{self.base_url}: malformed completion: {str(answer)[:300]}"
            ) from None
        lp = choice.get("logprobs") or {}
        token_lps = lp.get("token_logprobs")
        logprob = float(sum(x for x in token_lps if x is not None)) if token_lps else None
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        cut, which = cut_at_stop(text, stops)  # a server that keeps the stop string
        if which is not None:
            text, finish = cut, "stop"
        elif finish == "stop":
            which = self._matched_stop(choice, text, stops)
            if which is not None:
                text += which
            elif self.tokenizer.eos_token and text.endswith(self.tokenizer.eos_token):
                text = text[: -len(self.tokenizer.eos_token)]
        n = (answer.get("usage") or {}).get("completion_tokens")
        if n is None:
            n = len(token_lps) if token_lps else self.count_tokens([text])[0] + (finish == "stop")
        return Completion(text, int(n), logprob, finish, which)

    def _matched_stop(self, choice: dict, text: str, stops: list[str]) -> str | None:
        """Which stop string ended a 'stop' completion whose text lost it; None for EOS."""
        for key in ("stop_reason", "matched_stop"):  # vLLM, SGLang: a string, or a token id
            if key in choice:
                value = choice[key]
                return value if isinstance(value, str) and value in stops else None
        # Otherwise the generated tokens tell: the last one completed the stop string. (Tokens
        # decoded one by one need not spell the text: split multi-byte characters.)
        tokens = (choice.get("logprobs") or {}).get("tokens")
        if tokens:
            joined = "".join(tokens)
            last_start = len(joined) - len(tokens[-1])
            hits = [s for s in stops if s in joined and joined.rindex(s) + len(s) > last_start]
            return min(hits, key=lambda s: joined.rindex(s) + len(s)) if hits else None
        if stops and not self._warned_stop:
            self._warned_stop = True
            log.warning(
                "%s reports neither the matched stop string nor the generated tokens; "
                "'stop' completions are taken as ended by EOS",
                self.base_url,
            )
        return None
