"""The `hf` backend: batched generation and scoring with transformers, on CPU or GPU.

Sampling is seeded per sequence: prompt i of a call draws from its own random stream, seeded
from `(seed, i)` or from `seed[i]`, so outputs do not depend on `batch_size` or on how prompts
are grouped into batches (up to floating-point differences in the logits of padded batches).
Prompts extending a sequence of an earlier call only encode their new tokens
(`exsearch.generation.prefix_cache`).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache

from exsearch.checkpoints import load_model
from exsearch.config import GenerationConfig, ModelConfig
from exsearch.generation.base import Completion
from exsearch.generation.decoding import check_decoding, cut_at_stop, row_seeds
from exsearch.generation.next_token import TokenPicker
from exsearch.generation.padding import shared_left_padding
from exsearch.generation.prefix_cache import (
    PrefixCache,
    cache_layers,
    empty_with_room,
    new_cache,
    shared_prefix,
)
from exsearch.generation.running_batch import RunningBatch
from exsearch.prompts import encode_gold_answers
from exsearch.schema import Trajectory

log = logging.getLogger(__name__)

# A prefix shared by the rows of a batch is encoded once when at least this long.
_MIN_SHARED_PREFIX = 16
# What one more forward pass costs, in tokens encoded: its Python and weight reads take tens of
# milliseconds on a 2-core CPU, where a token of prompt costs ~1.5 ms. With 32, prompt
# processing on 128 dev questions fell from 162 s (at most two groups) to 108 s.
GROUP_OVERHEAD = 32


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


def _length_groups(lengths: list[int], overhead: int = GROUP_OVERHEAD) -> list[list[int]]:
    """Rows to encode together, so that little padding is encoded: groups of similar length.

    Each group is run as one left-padded batch, which costs about its rows times its longest
    length, plus `overhead` tokens' worth for the extra forward pass. Rows sorted by length are
    cut into the runs that minimise that total (dynamic programming over the cut points);
    groups come shortest first, rows in each by length.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    # best[j]: the cheapest cost of encoding the j shortest rows; cut[j]: where its last run starts.
    best, cut = [0] + [0] * len(sizes), [0] * (len(sizes) + 1)
    for j in range(1, len(sizes) + 1):
        best[j], cut[j] = min((best[i] + (j - i) * sizes[j - 1] + overhead, i) for i in range(j))
    groups, j = [], len(sizes)
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


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
        check = _StopCheck(self.tokenizer, stops, self.eos_ids, max_new_tokens)
        state = [_Row() for _ in prompts]
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

        The E-step's score (`exsearch.estep.weighting`): the chat with the gold answer in place of
        the model's (`prompts.gold_answer_tokens`), and the mean log-prob of the gold answer's
        tokens. Only the tokens the prefix cache does not hold go through the model: right
        after sampling, that is the answer turn, where a fresh forward pass of a ~1k-token
        chat cost about a second on a 2-core CPU. Batches are left-padded and sorted by the
        number of tokens to encode; chats with nothing cached run in groups of similar length
        (`_length_groups`). Logits are computed only over the answer. NaN (with a warning,
        `prompts.encode_gold_answers`) for an empty gold answer. One float per trajectory, in
        input order.
        """
        encoded = encode_gold_answers(self.tokenizer, trajectories)
        scores = [math.nan] * len(encoded)
        # The token before the first answer token must go through the model: its logits
        # predict that answer token.
        cap = {i: pos[0] - 1 for i, (_, pos) in enumerate(encoded) if pos}
        todo = list(cap)
        cached = [min(self.prefix_cache.match(encoded[i][0])[1], cap[i]) for i in todo]
        new_tokens = [len(encoded[i][0]) - c for i, c in zip(todo, cached, strict=True)]
        if any(cached):
            # Right after sampling only the short answer turns are new: little padding to save,
            # and other batches would change the E-step's bf16 scores from one version to the next.
            groups = [sorted(range(len(todo)), key=new_tokens.__getitem__)]
        else:
            # Whole chats of 0.5-1.5k tokens: padding 64 of them to the longest cost 2.7x the
            # time of running rows of similar length together.
            groups = _length_groups(new_tokens, self.group_overhead)
        batches = [
            [todo[j] for j in group[k : k + self.batch_size]]
            for group in groups
            for k in range(0, len(group), self.batch_size)
        ]
        for batch in tqdm(batches, desc="scoring gold answers", disable=not progress):
            ids = [encoded[i][0] for i in batch]
            inputs = self.prefix_cache.prepare(
                ids, self.pad_id, self.device, count=False, reuse_at_most=[cap[i] for i in batch]
            )
            cache = inputs.cache if inputs.cache is not None else new_cache()
            # Rows end in the last column (left padding): keep the logits of each row's last
            # tokens, from the one before its answer.
            keep = max(len(encoded[i][0]) - cap[i] for i in batch)
            logits = self._forward_new(
                inputs.input_ids, inputs.attention_mask, cache, cache.get_seq_length(), keep
            )
            for row, i in enumerate(batch):
                seq, pos = encoded[i]
                # The logit predicting the token at p sits at position p - 1.
                cols = torch.tensor([keep - len(seq) + p - 1 for p in pos], device=self.device)
                logp = torch.log_softmax(logits[row, cols].float(), dim=-1)
                targets = torch.tensor([seq[p] for p in pos], device=self.device)
                scores[i] = logp.gather(1, targets[:, None]).mean().item()
        return scores

    def _start_rows(self, rows: list[int], ids: list[list[int]]) -> RunningBatch:
        """Encode the prompts `ids` (of call rows `rows`) as a batch ready to decode."""
        self._encode_shared_prefix(ids)
        inputs = self.prefix_cache.prepare(ids, self.pad_id, self.device)
        fed, mask = inputs.input_ids, inputs.attention_mask  # every column the cache will hold
        logits, cache = self._prefill(fed, mask, inputs.cache)
        positions = mask.sum(-1, keepdim=True) - 1
        return RunningBatch(rows, fed, mask, positions, cache, logits)

    def _step(
        self, batch: RunningBatch, picker: TokenPicker, check: _StopCheck, state: list[_Row]
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

    def _prefill(
        self, fed: torch.Tensor, mask: torch.Tensor, cache: Cache | None
    ) -> tuple[torch.Tensor, Cache]:
        """Run the uncached prompt tokens; return the next-token logits and the full cache.

        The new tokens of a batch are left-padded to the longest. Their lengths differ (passages
        read in one row, a short answer request in another), so rows of similar length are run
        together (`_length_groups`), and the padding between groups is never encoded; the
        groups' caches are then put back side by side.
        """
        cache = cache if cache is not None else new_cache()
        past = cache.get_seq_length()
        lengths = mask[:, past:].sum(-1).tolist()
        groups = _length_groups(lengths, self.group_overhead)
        if len(groups) == 1:
            return self._forward_new(fed, mask, cache, past)[:, -1], cache
        n, total = len(lengths), fed.shape[1]
        logits = torch.empty(0)
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        for rows in groups:
            index = torch.tensor(rows, device=self.device)
            lead = shared_left_padding(mask[index, :past])  # cached columns all its rows mask
            skip = total - max(lengths[r] for r in rows)  # new-token padding all its rows share
            kept = past - lead
            # The group's cached columns, with exactly the room its new tokens fill.
            part_layers = []
            for k, v in cache_layers(cache):
                k_part, v_part = (empty_with_room(t, len(rows), kept, total - skip) for t in (k, v))
                k_part[:, :, :kept], v_part[:, :, :kept] = k[index, :, lead:], v[index, :, lead:]
                part_layers.append((k_part, v_part))
            part = new_cache(part_layers, kept)
            cut_fed = torch.cat([fed[index, lead:past], fed[index, skip:]], 1)
            cut_mask = torch.cat([mask[index, lead:past], mask[index, skip:]], 1)
            out = self._forward_new(cut_fed, cut_mask, part, kept)[:, -1]
            if not layers:
                logits = out.new_empty((n, out.shape[1]))
                layers = [
                    (empty_with_room(k, n, total), empty_with_room(v, n, total))
                    for k, v in cache_layers(part)
                ]
            logits[index] = out
            for full_layer, group_layer in zip(layers, cache_layers(part), strict=True):
                for full, held in zip(full_layer, group_layer, strict=True):
                    # (batch, kv_heads, columns, head_dim): cached columns, then the new
                    # tokens; the padding before each is zeroed
                    full[index, :, :lead] = 0
                    full[index, :, lead:past] = held[:, :, :kept]
                    full[index, :, past:skip] = 0
                    full[index, :, skip:total] = held[:, :, kept:]
        return logits, new_cache(layers, total)

    def _forward_new(
        self, fed: torch.Tensor, mask: torch.Tensor, cache: Cache, past: int, keep: int = 1
    ) -> torch.Tensor:
        """Run the columns of `fed` from `past` on; the logits of the last `keep` columns."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        return self._logits(fed[:, past:], mask, positions, cache, keep)

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
