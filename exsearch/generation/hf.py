"""The `hf` backend: batched generation and scoring with transformers, on CPU or GPU.

Sampling is seeded per sequence: prompt i of a call draws from its own random stream, seeded
from `(seed, i)` or from `seed[i]`, so outputs do not depend on `batch_size` or on how prompts
are grouped into batches (up to floating-point differences in the logits of padded batches).
Prompts extending a sequence of an earlier call only encode their new tokens
(`exsearch.generation.prefix_cache`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache

from exsearch.config import GenerationConfig, ModelConfig
from exsearch.generation.base import Completion
from exsearch.generation.decoding import check_decoding, cut_at_stop, row_seeds
from exsearch.generation.next_token import TokenPicker
from exsearch.generation.prefix_cache import PrefixCache, cache_layers, new_cache, shared_prefix
from exsearch.modeling import load_model

# A prefix shared by the rows of a batch is encoded once when at least this long.
_MIN_SHARED_PREFIX = 16


@dataclass
class _Row:
    """One sequence being decoded: what it generated and how it ended."""

    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    finish: Literal["stop", "length"] | None = None
    stop: str | None = None


class _StopCheck:
    """Decides, after each new token, whether a row is done: EOS, a stop string, or the limit.

    Only generated text is searched for stop strings: one straddling the prompt's end does not
    count. A stop string of L characters spans at most L tokens; a few more absorb decoding
    artefacts at the window's left edge (partial bytes, dropped leading spaces).
    """

    def __init__(self, tokenizer: Any, stops: list[str], eos_ids: list[int], limit: int):
        self.tokenizer = tokenizer
        self.stops = stops
        self.eos = set(eos_ids)
        self.limit = limit
        self.window = max((len(s) for s in stops), default=0) + 4

    def update(self, row: _Row) -> bool:
        """Set `row.finish` (and `row.stop`) if its last token ended it; True if it did."""
        if row.tokens[-1] in self.eos:
            row.finish = "stop"
        elif self.stops and (
            hits := [
                s for s in self.stops if s in _decode(self.tokenizer, row.tokens[-self.window :])
            ]
        ):
            row.finish, row.stop = "stop", hits[0]
        elif len(row.tokens) >= self.limit:
            row.finish = "length"
        return row.finish is not None

    def completion(self, row: _Row) -> Completion:
        """The row's Completion: text cut right after its stop string, never holding EOS."""
        tokens = row.tokens
        if row.finish == "stop" and row.stop is None:  # EOS
            tokens = tokens[:-1]
        text = _decode(self.tokenizer, tokens)
        if row.stop is not None:
            text = cut_at_stop(text, self.stops)[0]
        return Completion(text, len(row.tokens), row.logprob, row.finish or "length", row.stop)


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _split_by_length(lengths: list[int]) -> tuple[list[int], list[int]]:
    """Rows (short, long) to encode apart, when that saves a third of the padded tokens.

    Otherwise ([], all rows).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    padded = len(lengths) * max(lengths)
    best, cut = padded, 0
    for k in range(1, len(order)):
        cost = k * lengths[order[k - 1]] + (len(order) - k) * lengths[order[-1]]
        if cost < best:
            best, cut = cost, k
    if best > padded * 2 / 3:
        return [], list(range(len(lengths)))
    return order[:cut], order[cut:]


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


class HFGenerator:
    """Batched generation and scoring with a transformers causal LM (CPU or GPU).

    Prompts are sorted by length and cut into batches of `batch_size`, left-padded; results come
    back in the caller's order. `logprob` is always computed (it costs one log-sum-exp per step).
    Prompts that extend a sequence of an earlier call reuse its keys/values (`PrefixCache`,
    up to `prefix_cache_tokens` tokens kept; 0 turns it off).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        prefix_cache_tokens: int = GenerationConfig().prefix_cache_tokens,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
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
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[Completion | None] = [None] * len(prompts)
        batches = _chunks(order, self.batch_size)
        # The agent sends every live trajectory's next turn in one call: on a CPU one call can
        # run for minutes, so show its batches (only when there are several).
        shown = tqdm(batches, desc="  turns", unit="batch", leave=False, disable=len(batches) < 4)
        for batch in shown:
            done = self._generate_batch(
                [encoded[i] for i in batch],
                [seeds[i] for i in batch],
                max_new_tokens,
                stops,
                temperature,
                top_p,
            )
            for i, completion in zip(batch, done, strict=True):
                results[i] = completion
        return results  # type: ignore[return-value]

    def _generate_batch(
        self,
        rows: list[list[int]],
        seeds: list[int],
        max_new_tokens: int,
        stops: list[str],
        temperature: float,
        top_p: float,
    ) -> list[Completion]:
        """Decode one batch token by token; a row leaves the batch as soon as it is done.

        A hand-written loop rather than `generate()`, because finished rows must leave (a
        smaller batch is a faster step) and their keys/values go to the prefix cache.
        """
        self._encode_shared_prefix(rows)
        inputs = self.prefix_cache.prepare(rows, self.pad_id, self.device)
        fed, mask = inputs.input_ids, inputs.attention_mask  # every column the cache will hold
        logits, cache = self._prefill(fed, mask, inputs.cache)
        positions = mask.sum(-1, keepdim=True) - 1
        generators = (
            [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
            if temperature > 0
            else []
        )
        sampler = TokenPicker(temperature, top_p, generators)
        check = _StopCheck(self.tokenizer, stops, self.eos_ids, max_new_tokens)
        state = [_Row() for _ in rows]
        live = list(range(len(rows)))  # batch position → row
        while True:
            chosen, logp = sampler.pick(logits, live)
            done = []
            for b, (r, token, lp) in enumerate(
                zip(live, chosen.tolist(), logp.tolist(), strict=True)
            ):
                state[r].tokens.append(token)
                state[r].logprob += lp
                if check.update(state[r]):
                    done.append(b)
            if done:
                self.prefix_cache.keep(fed, mask, cache, done)
                stay = [b for b in range(len(live)) if b not in done]
                if not stay:
                    break
                index = torch.tensor(stay, device=self.device)
                cache.batch_select_indices(index)
                fed, mask, positions = fed[index], mask[index], positions[index]
                chosen = chosen[index]
                live = [live[b] for b in stay]
            new = chosen.unsqueeze(-1)
            fed = torch.cat([fed, new], 1)
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], 1)
            positions = positions + 1
            logits = self._next_logits(new, mask, positions, cache)
        return [check.completion(row) for row in state]

    def _prefill(
        self, fed: torch.Tensor, mask: torch.Tensor, cache: Cache | None
    ) -> tuple[torch.Tensor, Cache]:
        """Run the uncached prompt tokens; return the next-token logits and the full cache.

        The new tokens of a batch are left-padded to the longest. When their lengths differ a
        lot (passages read in one row, a short answer request in another), the short rows are
        run apart, so padding is not encoded; the two caches are then put side by side.
        """
        cache = cache if cache is not None else new_cache()
        past = cache.get_seq_length()
        lengths = mask[:, past:].sum(-1).tolist()
        short, long_ = _split_by_length(lengths)
        if not short:
            return self._forward_new(fed, mask, cache, past), cache
        n, total = len(lengths), fed.shape[1]
        logits: torch.Tensor | None = None
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        for rows in (short, long_):
            index = torch.tensor(rows, device=self.device)
            skip = past + (total - past - max(lengths[r] for r in rows))  # padding all rows share
            part = new_cache([(k[index], v[index]) for k, v in cache_layers(cache)])
            cut_fed = torch.cat([fed[index, :past], fed[index, skip:]], 1)
            cut_mask = torch.cat([mask[index, :past], mask[index, skip:]], 1)
            out = self._forward_new(cut_fed, cut_mask, part, past)
            if logits is None:
                logits = out.new_empty((n, out.shape[1]))
                layers = [
                    (
                        k.new_zeros((n, k.shape[1], total, k.shape[3])),
                        v.new_zeros((n, v.shape[1], total, v.shape[3])),
                    )
                    for k, v in cache_layers(part)
                ]
            logits[index] = out
            for (full_k, full_v), (k, v) in zip(layers, cache_layers(part), strict=True):
                full_k[index, :, :past], full_k[index, :, skip:] = k[:, :, :past], k[:, :, past:]
                full_v[index, :, :past], full_v[index, :, skip:] = v[:, :, :past], v[:, :, past:]
        return logits, new_cache(layers)

    def _forward_new(
        self, fed: torch.Tensor, mask: torch.Tensor, cache: Cache, past: int
    ) -> torch.Tensor:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        return self._next_logits(fed[:, past:], mask, positions, cache)

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
        _, cache = self._prefill(inputs.input_ids, inputs.attention_mask, inputs.cache)
        self.prefix_cache.keep(inputs.input_ids, inputs.attention_mask, cache)

    def _next_logits(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Cache
    ) -> torch.Tensor:
        """Logits of the token after `ids` (appended to `cache`, which grows in place)."""
        kw = {"logits_to_keep": 1} if self._keeps_logits else {}
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_arg: cache},
            **kw,
        )
        return out.logits[:, -1]
