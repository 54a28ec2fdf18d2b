"""The `hf` backend: batched generation and scoring with transformers, on CPU or GPU.

Sampling is seeded per sequence: prompt i of a call draws from its own random stream, seeded
from `(seed, i)` or from `seed[i]`, so outputs do not depend on `batch_size` or on how prompts
are grouped into batches (up to floating-point differences in the logits of padded batches).
Prompts extending a sequence of an earlier call only encode their new tokens
(`exsearch.prefix_cache`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from exsearch.config import GenerationConfig, ModelConfig
from exsearch.decoding import check_decoding, cut_at_stop, row_seeds
from exsearch.generation import Completion
from exsearch.modeling import load_model
from exsearch.prefix_cache import PrefixCache, left_pad

# transformers 5 renamed generate()'s `past_key_values` argument and output field to `cache`.
_CACHE_FIELD = (
    "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"
)


class _RowSampler(LogitsProcessor):
    """Choose each row's next token itself (argmax, or a draw from that row's own RNG).

    Returning a one-hot score makes generate()'s greedy step pick exactly that token, so the
    draw of a row never depends on the other rows of the batch. Also records the token's
    log-probability under the raw logits.
    """

    def __init__(self, temperature: float, top_p: float, generators: list[torch.Generator]):
        self.temperature = temperature
        self.top_p = top_p
        self.generators = generators
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if self.temperature == 0:
            chosen = scores.argmax(-1)
        else:
            u = torch.cat(
                [torch.rand(1, generator=g, device=scores.device) for g in self.generators]
            )
            chosen = self._sample(u, (scores / self.temperature).softmax(-1))
        logp = scores.gather(-1, chosen.unsqueeze(-1)).squeeze(-1) - scores.logsumexp(-1)
        self.logprobs.append(logp)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen.unsqueeze(-1), 0.0)

    def _sample(self, u: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF draw (one uniform `u` per row) from the top_p nucleus of `probs`."""
        if self.top_p >= 1:
            return _inverse_cdf(u, probs, None)
        # The nucleus is the shortest prefix of the sorted distribution whose mass reaches
        # top_p. It usually lies within the top few dozen tokens; a full-vocabulary sort is
        # slow on CPU, so rows whose top-k mass falls short fall back to it, row by row.
        k = min(_TOP_K_FAST, probs.shape[-1])
        top_p_vals, top_idx = probs.topk(k, dim=-1)
        chosen = _inverse_cdf(u, _nucleus(top_p_vals, self.top_p), top_idx)
        short = (top_p_vals.sum(-1) < self.top_p).nonzero().flatten()
        if len(short):
            sorted_p, order = probs[short].sort(-1, descending=True)
            chosen[short] = _inverse_cdf(u[short], _nucleus(sorted_p, self.top_p), order)
        return chosen


_TOP_K_FAST = 64


def _nucleus(sorted_p: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every probability past the nucleus (the top token always stays)."""
    return sorted_p * ((sorted_p.cumsum(-1) - sorted_p) < top_p)


def _inverse_cdf(u: torch.Tensor, p: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Per row, the token where the cumulative (unnormalised) mass `p` passes u * total."""
    cum = p.cumsum(-1)
    pos = torch.searchsorted(cum, (u * cum[:, -1]).unsqueeze(-1)).clamp(max=cum.shape[-1] - 1)
    return (pos if index is None else index.gather(-1, pos)).squeeze(-1)


class _StopOnStrings(StoppingCriteria):
    """Stop a row once its generated text contains a stop string; remember when and which.

    Only generated text is searched: a stop string straddling the prompt's end does not count.
    """

    def __init__(self, tokenizer: Any, stops: list[str], prompt_len: int, eos_ids: list[int]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_len = prompt_len
        self.eos_ids = eos_ids
        # A stop string of L characters spans at most L tokens; a few more absorb decoding
        # artefacts at the window's left edge (partial bytes, dropped leading spaces).
        self.window = max(len(s) for s in stops) + 4
        self.halted: dict[int, tuple[int, str]] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        gen = input_ids[:, self.prompt_len :]
        eos = torch.tensor(self.eos_ids, dtype=gen.dtype, device=gen.device)
        ended = torch.isin(gen, eos).any(-1).tolist()
        done = []
        for row, row_ids in enumerate(gen.tolist()):
            if row not in self.halted and not ended[row]:
                tail = _decode(self.tokenizer, row_ids[-self.window :])
                hits = [s for s in self.stops if s in tail]
                if hits:
                    self.halted[row] = (len(row_ids), hits[0])
            done.append(row in self.halted)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


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
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

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

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = left_pad(rows, self.pad_id)
        return ids.to(self.device), mask.to(self.device)

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
        for batch in _chunks(order, self.batch_size):
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
        inputs = self.prefix_cache.prepare(rows, self.pad_id, self.device)
        ids, mask = inputs.input_ids, inputs.attention_mask
        generators = []
        if temperature > 0:
            for s in seeds:
                generators.append(torch.Generator(device=self.device).manual_seed(s))
        sampler = _RowSampler(temperature, top_p, generators)
        stopper = (
            _StopOnStrings(self.tokenizer, stops, ids.shape[1], self.eos_ids) if stops else None
        )
        # Every knob that could turn on a logits processor is pinned to neutral, because a
        # model's own generation_config.json (e.g. a repetition penalty) fills unset ones.
        config = HFGenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
            use_cache=True,
            return_dict_in_generate=True,
        )
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
            stopping_criteria=StoppingCriteriaList([stopper] if stopper else []),
            **({_CACHE_FIELD: inputs.cache} if inputs.cache is not None else {}),
        )
        gen = out.sequences[:, ids.shape[1] :].tolist()
        logprobs = torch.stack(sampler.logprobs, dim=1).tolist() if sampler.logprobs else []
        eos = set(self.eos_ids)
        completions = []
        for row, tokens in enumerate(gen):
            end = next((j for j, t in enumerate(tokens) if t in eos), None)
            halted = stopper.halted.get(row) if stopper else None
            if halted is not None:
                n = halted[0]
                text, which = cut_at_stop(_decode(self.tokenizer, tokens[:n]), stops)
                finish, which = "stop", which or halted[1]
            elif end is not None:
                n, text, finish, which = (
                    end + 1,
                    _decode(self.tokenizer, tokens[:end]),
                    "stop",
                    None,
                )
            else:
                n, finish, which = len(tokens), "length", None
                text = _decode(self.tokenizer, tokens)
            lp = float(sum(logprobs[row][:n])) if logprobs else None
            completions.append(Completion(text, n, lp, finish, which))
        self._keep_prefixes(out, mask, [c.n_tokens for c in completions])
        return completions

    def _keep_prefixes(self, out: Any, prompt_mask: torch.Tensor, consumed: list[int]) -> None:
        """Hand the call's keys/values to the prefix cache: prompt tokens and each row's own."""
        cache = getattr(out, _CACHE_FIELD, None)
        if self.prefix_cache.max_tokens == 0 or cache is None:
            return
        generated = torch.arange(out.sequences.shape[1] - prompt_mask.shape[1], device=self.device)
        own = generated < torch.tensor(consumed, device=self.device).unsqueeze(-1)
        self.prefix_cache.keep(out.sequences, torch.cat([prompt_mask, own.long()], 1), cache)

    @torch.inference_mode()
    def score_continuations(
        self, prompts: list[str], continuations: list[str], batch_size: int | None = None
    ) -> list[tuple[float, int]]:
        """Log-probability of each continuation given its prompt: (sum log-prob, token count).

        Prompt and continuation are tokenised separately (as in generation: prompt tokens, then
        generated tokens) and concatenated. An empty continuation scores (0.0, 0).
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        p_ids, c_ids = self._encode(prompts), self._encode(continuations)
        for i, ids in enumerate(p_ids):
            if not ids:
                raise ValueError(
                    f"prompt {i} is empty; its first continuation token has no context"
                )
        order = sorted(range(len(prompts)), key=lambda i: -(len(p_ids[i]) + len(c_ids[i])))
        scores: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
        for batch in _chunks(order, batch_size or self.batch_size):
            n_cont = [len(c_ids[i]) for i in batch]
            width = max(n_cont)
            if width == 0:
                continue
            ids, mask = self._left_pad([p_ids[i] + c_ids[i] for i in batch])
            # Left padding puts every continuation at the right edge: only the last width + 1
            # positions need logits. Positions count from each row's first real token.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            kw = {"logits_to_keep": width + 1} if self._keeps_logits else {}
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, **kw
            ).logits
            logits = logits[:, -(width + 1) : -1].float()
            targets = ids[:, -width:]
            token_lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            keep = torch.arange(width, device=ids.device) >= (
                width - torch.tensor(n_cont, device=ids.device)
            ).unsqueeze(-1)
            # where(), not a product: logits at padded positions may be NaN.
            sums = torch.where(keep, token_lp, 0.0).sum(-1).tolist()
            for i, s, n in zip(batch, sums, n_cont, strict=True):
                scores[i] = (float(s), n)
        return scores
