"""Gold-answer log-probs read from a completions server's echoed prompt (`echo` + `logprobs`).

The server scores the whole chat with the gold answer in one pass; what is left is to find,
among the tokens it echoes, those that overlap the gold answer's characters. Servers differ in
what they echo (token strings that spell the text or raw BPE symbols, a BOS added or dropped),
so the positions come from the echoed offsets when they are exact and from the local tokenizer
otherwise. `openai.OpenAIGenerator.gold_answer_scores` averages what these functions return.
"""

from __future__ import annotations

import itertools
from typing import Any

from exsearch.generation.completions_client import ServerError
from exsearch.prompts import ANSWER_OPEN, trajectory_id, with_gold_answer
from exsearch.schema import Trajectory


def gold_span(tokenizer: Any, traj: Trajectory) -> tuple[str, int, int]:
    """The chat with the gold answer, rendered whole, and the gold answer's character span.

    The whole text is scored rather than a prefix, so its tokens are exactly those
    `prompts.gold_answer_tokens` cuts from (causal log-probs ignore what follows).
    """
    gold = traj.answers[0].strip()
    messages = with_gold_answer(traj.messages, gold)
    prefix = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    a = full.find(ANSWER_OPEN + gold, len(prefix)) + len(ANSWER_OPEN)
    return full, a, a + len(gold)


def gold_logprobs(
    tokenizer: Any,
    answer: dict,
    text: str,
    a: int,
    b: int,
    n_gold: int,
    traj: Trajectory,
    served: str,
) -> list[float]:
    """Log-probs of the prompt tokens that overlap characters [a, b) of `text`.

    `n_gold` is the number of gold tokens the local tokenizer finds, a check that the
    server tokenises like the model directory's tokenizer; `served` names the model and the
    server in that check's error.
    """
    choice = answer["choices"][0]
    lp = choice.get("logprobs") or {}
    tokens, token_lps = lp.get("tokens") or [], lp.get("token_logprobs") or []
    offsets = lp.get("text_offset") or []
    usage = answer.get("usage") or {}
    n_prompt = usage.get("prompt_tokens") or len(token_lps) - 1
    if (
        len(token_lps) >= n_prompt
        and "".join(tokens[:n_prompt]) == text
        and len(offsets) >= n_prompt
    ):
        # The tokens spell the text exactly, so the offsets are true character offsets.
        ends = [*offsets[1:n_prompt], len(text)]
        pos = [j for j in range(n_prompt) if offsets[j] < b and ends[j] > a]
    else:
        n_generated = usage.get("completion_tokens")
        pos = align_with_local_tokens(
            tokenizer,
            text,
            a,
            b,
            n_prompt,
            len(token_lps),
            1 if n_generated is None else n_generated,
        )
        if pos is None:
            raise ServerError(
                f"trajectory {trajectory_id(traj)}: the server returned no prompt log-probs; "
                "it must support `echo` with `logprobs` (vLLM, SGLang and llama.cpp's Python "
                "server with --logits_all true do)"
            )
    if len(pos) != n_gold or any(token_lps[j] is None for j in pos):
        raise ServerError(
            f"trajectory {trajectory_id(traj)}: the server finds {len(pos)} gold-answer "
            f"tokens among {n_prompt} prompt tokens, the local tokenizer {n_gold}; is the "
            f"server serving this model ({served}) and not adding special tokens?"
        )
    return [float(token_lps[j]) for j in pos]


def align_with_local_tokens(
    tokenizer: Any, text: str, a: int, b: int, n_prompt: int, n_logprobs: int, n_generated: int
) -> list[int] | None:
    """Positions, in the server's echoed log-probs, of the tokens overlapping [a, b) of `text`.

    For token strings that do not spell the text (raw BPE symbols, replacement characters of
    split multi-byte characters, special tokens echoed as ''): the same tokenizer gives the
    same tokens, so positions come from the local tokenization, shifted by a BOS the server
    added. llama.cpp's Python server (llama-cpp-python 0.3) leaves every token whose id is
    the BOS id out of the echoed list, wherever it is: in ChatML models whose BOS is
    `<|im_start|>` (SmolLM2) that is one token per message, and positions are mapped past
    them. That server's echoed log-probs are right only for a prompt that starts with BOS
    (it drops that token and reads each next one from the logits before it; otherwise they
    are one position off), so only that layout is accepted. None when the log-probs fit
    no layout (e.g. the server echoed no prompt).
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    wanted = [j for j, (s, e) in enumerate(enc["offset_mapping"]) if s < b and e > a]
    shift = n_prompt - len(ids)
    bos = tokenizer.bos_token_id
    if (
        shift == 0
        and bos is not None
        and ids[:1] == [bos]
        and n_logprobs == n_prompt + n_generated - ids.count(bos)
    ):
        echoed = list(itertools.accumulate(t != bos for t in ids))  # 1-based echoed index
        return [echoed[j] - 1 for j in wanted if ids[j] != bos]
    if n_logprobs >= n_prompt:
        return [j + shift for j in wanted] if shift in (0, 1) else []
    return None
