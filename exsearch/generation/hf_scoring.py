"""Gold-answer scoring for the `hf` backend: the E-step's score, read from the model in-process.

`HFGenerator.gold_answer_scores` calls `gold_answer_scores` here with its model call, tokenizer
and prefix cache. Kept apart from the decoding loop (`hf.py`) because it shares nothing with it
but those: no sampling, no stop strings, no rows joining or leaving; only one forward pass per
batch over the tokens the prefix cache does not already hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from exsearch.generation.prefill import Forward, forward_new, length_groups
from exsearch.generation.prefix_cache import PrefixCache, new_cache
from exsearch.prompts import encode_gold_answers
from exsearch.schema import Trajectory


def gold_answer_scores(
    forward: Forward,
    tokenizer: Any,
    prefix_cache: PrefixCache,
    trajectories: Sequence[Trajectory],
    *,
    pad_id: int,
    device: torch.device,
    batch_size: int,
    group_overhead: int,
    progress: bool = True,
) -> list[float]:
    """Length-normalised log-likelihood of each trajectory's gold answer (`answers[0]`).

    The E-step's score (`exsearch.estep.weighting`): the chat with the gold answer in place of
    the model's (`prompts.gold_answer_tokens`), and the mean log-prob of the gold answer's
    tokens. Only the tokens `prefix_cache` does not hold go through the model: right after
    sampling, that is the answer turn, where a fresh forward pass of a ~1k-token chat cost
    about a second on a 2-core CPU. Batches are left-padded and sorted by the number of tokens
    to encode; chats with nothing cached run in groups of similar length (`length_groups`).
    Logits are computed only over the answer. NaN (with a warning,
    `prompts.encode_gold_answers`) for an empty gold answer. One float per trajectory, in input
    order.
    """
    encoded = encode_gold_answers(tokenizer, trajectories)
    scores = [math.nan] * len(encoded)
    # The token before the first answer token must go through the model: its logits
    # predict that answer token.
    cap = {i: pos[0] - 1 for i, (_, pos) in enumerate(encoded) if pos}
    todo = list(cap)
    cached = [min(prefix_cache.match(encoded[i][0])[1], cap[i]) for i in todo]
    new_tokens = [len(encoded[i][0]) - c for i, c in zip(todo, cached, strict=True)]
    batches = _batches(todo, new_tokens, any(cached), batch_size, group_overhead)
    for batch in tqdm(batches, desc="scoring gold answers", disable=not progress):
        ids = [encoded[i][0] for i in batch]
        inputs = prefix_cache.prepare(
            ids, pad_id, device, count=False, reuse_at_most=[cap[i] for i in batch]
        )
        cache = inputs.cache if inputs.cache is not None else new_cache()
        # Rows end in the last column (left padding): keep the logits of each row's last
        # tokens, from the one before its answer.
        keep = max(len(encoded[i][0]) - cap[i] for i in batch)
        logits = forward_new(  # (batch, keep, vocab)
            forward, inputs.input_ids, inputs.attention_mask, cache, cache.get_seq_length(), keep
        )
        for row, i in enumerate(batch):
            seq, pos = encoded[i]
            # The logit predicting the token at p sits at position p - 1.
            cols = torch.tensor([keep - len(seq) + p - 1 for p in pos], device=device)
            logp = torch.log_softmax(logits[row, cols].float(), dim=-1)  # (answer tokens, vocab)
            targets = torch.tensor([seq[p] for p in pos], device=device)
            scores[i] = logp.gather(1, targets[:, None]).mean().item()
    return scores


def _batches(
    todo: list[int], new_tokens: list[int], any_cached: bool, batch_size: int, overhead: int
) -> list[list[int]]:
    """The trajectories of `todo` in batches of at most `batch_size`, in the order they run."""
    if any_cached:
        # Right after sampling only the short answer turns are new: little padding to save,
        # and other batches would change the E-step's bf16 scores from one version to the next.
        groups = [sorted(range(len(todo)), key=new_tokens.__getitem__)]
    else:
        # Whole chats of 0.5-1.5k tokens: padding 64 of them to the longest cost 2.7x the
        # time of running rows of similar length together.
        groups = length_groups(new_tokens, overhead)
    return [
        [todo[j] for j in group[k : k + batch_size]]
        for group in groups
        for k in range(0, len(group), batch_size)
    ]
