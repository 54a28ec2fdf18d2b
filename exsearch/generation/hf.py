"""The `hf` backend: batched generation and scoring with transformers, on CPU or GPU.

`HFGenerator` and its decoding loop live here; what the loop builds on is split by concept:
when a row is done (`stopping.py`), grouped prompt encoding (`prefill.py`), the rows decoded
together (`running_batch.py`), reused keys/values (`prefix_cache.py`) and gold-answer scoring
(`hf_scoring.py`).

Sampling is seeded per sequence: prompt i of a call draws from its own random stream, seeded
from `(seed, i)` or from `seed[i]`, so outputs do not depend on `batch_size` or on how prompts
are grouped into batches (up to floating-point differences in the logits of padded batches).
Prompts extending a sequence of an earlier call only encode their new tokens
(`exsearch.generation.prefix_cache`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache

from exsearch.checkpoints import load_model
from exsearch.config import GenerationConfig, ModelConfig
from exsearch.generation.base import Completion
from exsearch.generation.decoding import check_decoding, row_seeds
from exsearch.generation.hf_scoring import gold_answer_scores
from exsearch.generation.next_token import TokenPicker
from exsearch.generation.prefill import GROUP_OVERHEAD, prefill
from exsearch.generation.prefix_cache import PrefixCache, shared_prefix
from exsearch.generation.running_batch import RunningBatch
from exsearch.generation.stopping import Row, StopCheck
from exsearch.schema import Trajectory

log = logging.getLogger(__name__)

# A prefix shared by the rows of a batch is encoded once when at least this long.
_MIN_SHARED_PREFIX = 16


class HFGenerator:
    """Batched generation and scoring with a transformers causal LM (CPU or GPU).

    Up to `batch_size` prompts are decoded together, longest first, left-padded; as rows finish,
    waiting prompts join the batch (`RunningBatch`). Results come back in the caller's order.
    `logprob` is always computed (it costs one log-sum-exp per step).
    Prompts that extend a sequence of an earlier call reuse its keys/values (`PrefixCache`,
    up to `prefix_cache_tokens` tokens kept; 0 turns it off). New prompt tokens are encoded in
    groups of rows of similar length; `group_overhead` is what one more forward pass costs in
    tokens (a huge value encodes each batch's new tokens as one padded batch).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        prefix_cache_tokens: int = GenerationConfig().prefix_cache_tokens,
        group_overhead: int = GROUP_OVERHEAD,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self.group_overhead = group_overhead
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        self.eos_ids: list[int] = eos
        forward = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in forward
        # transformers 5 renamed the forward argument `past_key_values` to `cache`.
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"

    @classmethod
    def from_config(
        cls, model_path: str | Path, model_cfg: ModelConfig, gen_cfg: GenerationConfig
    ) -> HFGenerator:
        """Load the model saved at `model_path` with the `model` and `generation` params."""
        model, tokenizer = load_model(model_path, model_cfg.dtype, model_cfg.device)
        return cls(model, tokenizer, gen_cfg.batch_size, gen_cfg.prefix_cache_tokens)

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return next(self.model.parameters()).device

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token count of each text, without added special tokens."""
        return [len(ids) for ids in self._encode(texts)]

    def chat_prompt(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        """Render `messages` ({'role', 'content'} dicts) with the tokenizer's chat template."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def reset(self) -> None:
        """Empty the prefix cache: later calls no longer depend on what earlier ones encoded."""
        self.prefix_cache.clear()

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
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
        """Continue each prompt (already chat-templated); one Completion per prompt, in order.

        temperature 0 is greedy; otherwise sampling with temperature and top_p. `seed` is one
        int (sequence i uses `sequence_seed(seed, i)`), one int per prompt, or None (random).
        """
        check_decoding(max_new_tokens, temperature, top_p)
        stops = [s for s in stop if s]
        seeds = row_seeds(seed, len(prompts)) if temperature > 0 else [0] * len(prompts)
        encoded = self._encode(prompts)
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"prompt {i} is empty; a prompt needs at least one token")
        # Longest first: rows that join later are shorter, so joining adds little padding.
        queue = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        generators = (
            [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
            if temperature > 0
            else []
        )
        picker = TokenPicker(temperature, top_p, generators)
        check = StopCheck(self.tokenizer, stops, self.eos_ids, max_new_tokens)
        state = [Row() for _ in prompts]
        # The agent sends every live trajectory's next turn in one call: on a CPU one call can
        # run for minutes, so show its progress (only when it is several batches long).
        bar = tqdm(
            total=len(prompts),
            desc="  turns",
            unit="row",
            leave=False,
            disable=len(prompts) < 4 * self.batch_size,
        )
        batch: RunningBatch | None = None
        while queue or batch is not None:
            room = self.batch_size - (len(batch) if batch is not None else 0)
            if queue and room >= (self.batch_size + 1) // 2:  # refill once half has left
                joining, queue = queue[:room], queue[room:]
                fresh = self._start_rows(joining, [encoded[i] for i in joining])
                batch = fresh if batch is None else batch.join(fresh)
            assert batch is not None  # rows are left, and an empty batch always takes some
            batch = self._step(batch, picker, check, state)
            finished = len(prompts) - len(queue) - (len(batch) if batch is not None else 0)
            bar.update(finished - bar.n)
        bar.close()
        return [check.completion(row) for row in state]

    @torch.inference_mode()
    def gold_answer_scores(
        self, trajectories: Sequence[Trajectory], *, progress: bool = True
    ) -> list[float]:
        """Length-normalised log-likelihood of each trajectory's gold answer (`answers[0]`).

        The E-step's score, reusing the prefix cache (`hf_scoring.gold_answer_scores`). NaN for
        an empty gold answer. One float per trajectory, in input order.
        """
        return gold_answer_scores(
            self._logits,
            self.tokenizer,
            self.prefix_cache,
            trajectories,
            pad_id=self.pad_id,
            device=self.device,
            batch_size=self.batch_size,
            group_overhead=self.group_overhead,
            progress=progress,
        )

    def _start_rows(self, rows: list[int], ids: list[list[int]]) -> RunningBatch:
        """Encode the prompts `ids` (of call rows `rows`) as a batch ready to decode."""
        self._encode_shared_prefix(ids)
        inputs = self.prefix_cache.prepare(ids, self.pad_id, self.device)
        fed, mask = inputs.input_ids, inputs.attention_mask  # every column the cache will hold
        logits, cache = prefill(self._logits, fed, mask, inputs.cache, self.group_overhead)
        positions = mask.sum(-1, keepdim=True) - 1
        return RunningBatch(rows, fed, mask, positions, cache, logits)

    def _step(
        self, batch: RunningBatch, picker: TokenPicker, check: StopCheck, state: list[Row]
    ) -> RunningBatch | None:
        """Choose every row's next token; finished rows leave (None when none is left).

        A hand-written loop rather than `generate()`, because finished rows must leave (a
        smaller batch is a faster step), waiting prompts must join, and finished rows'
        keys/values go to the prefix cache.
        """
        chosen, logp = picker.pick(batch.logits, batch.rows)
        done = []
        for b, (r, token, lp) in enumerate(
            zip(batch.rows, chosen.tolist(), logp.tolist(), strict=True)
        ):
            state[r].tokens.append(token)
            state[r].logprob += lp
            if check.update(state[r]):
                done.append(b)
        if done:
            self.prefix_cache.keep(batch.fed, batch.mask, batch.cache, done)
            stay = [b for b in range(len(batch)) if b not in done]
            if not stay:
                return None
            order = batch.keep_only(stay)
            chosen = chosen[torch.tensor(order, device=self.device)]
        new = chosen.unsqueeze(-1)
        batch.append(new)
        batch.logits = self._next_logits(new, batch.mask, batch.positions, batch.cache)
        return batch

    def _encode_shared_prefix(self, rows: list[list[int]]) -> None:
        """Encode once, into the prefix cache, what every row of the batch starts with.

        The system prompt of a first turn, or the whole prompt of K samples of one question,
        would otherwise be encoded once per row.
        """
        if self.prefix_cache.max_tokens == 0 or len(rows) < 2:
            return
        n = min(shared_prefix(rows), min(len(r) for r in rows) - 1)
        if n < _MIN_SHARED_PREFIX or self.prefix_cache.match(rows[0][: n + 1])[1] >= n:
            return
        inputs = self.prefix_cache.prepare([rows[0][:n]], self.pad_id, self.device, count=False)
        _, cache = prefill(
            self._logits, inputs.input_ids, inputs.attention_mask, inputs.cache, self.group_overhead
        )
        self.prefix_cache.keep(inputs.input_ids, inputs.attention_mask, cache)

    def _next_logits(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Cache
    ) -> torch.Tensor:
        """Logits of the token after `ids` (appended to `cache`, which grows in place)."""
        return self._logits(ids, mask, positions, cache, 1)[:, -1]

    def _logits(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Cache,
        keep: int,
    ) -> torch.Tensor:
        """Run `ids` (appended to `cache`); the logits of their last `keep` columns."""
        kw = {"logits_to_keep": keep} if self._keeps_logits else {}
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_arg: cache},
            **kw,
        )
        return out.logits[:, -keep:]
