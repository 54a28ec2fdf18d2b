"""Prompt encoding for the `hf` backend: new tokens run in groups of rows of similar length.

A batch's new prompt tokens differ in length (passages read in one row, a short answer request
in another), and a left-padded batch costs its rows times its longest row. So rows are cut into
groups of similar length (`length_groups`), each group is run with only its own padding, and
the groups' keys/values are put back side by side into one cache. Kept apart from `hf.py`
because both decoding (`HFGenerator`) and gold-answer scoring (`hf_scoring.py`) group rows this
way; neither needs the other. The model is reached only through a `Forward` function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.cache_utils import Cache

from exsearch.generation.padding import shared_left_padding
from exsearch.generation.prefix_cache import cache_layers, empty_with_room, new_cache

# What one more forward pass costs, in tokens encoded: its Python and weight reads take tens of
# milliseconds on a 2-core CPU, where a token of prompt costs ~1.5 ms. With 32, prompt
# processing on 128 dev questions fell from 162 s (at most two groups) to 108 s.
GROUP_OVERHEAD = 32

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Cache, int], torch.Tensor]
"""`forward(ids, mask, positions, cache, keep)`: run `ids` (appended to `cache`, which grows in
place) and return the logits of their last `keep` columns: the model call `HFGenerator` passes."""


def length_groups(lengths: list[int], overhead: int = GROUP_OVERHEAD) -> list[list[int]]:
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


def forward_new(
    forward: Forward,
    fed: torch.Tensor,
    mask: torch.Tensor,
    cache: Cache,
    past: int,
    keep: int = 1,
) -> torch.Tensor:
    """Run the columns of `fed` from `past` on; the logits of the last `keep` columns."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    return forward(fed[:, past:], mask, positions, cache, keep)


def prefill(
    forward: Forward,
    fed: torch.Tensor,
    mask: torch.Tensor,
    cache: Cache | None,
    overhead: int = GROUP_OVERHEAD,
) -> tuple[torch.Tensor, Cache]:
    """Run the uncached prompt tokens; return the next-token logits and the full cache.

    `fed` and `mask` are (batch, columns), left-padded; `cache` holds their first columns. Rows
    of similar new length run together (`length_groups` with `overhead`), and the padding
    between groups is never encoded; the groups' caches are then put back side by side.
    """
    cache = cache if cache is not None else new_cache()
    past = cache.get_seq_length()
    lengths = mask[:, past:].sum(-1).tolist()
    groups = length_groups(lengths, overhead)
    if len(groups) == 1:
        return forward_new(forward, fed, mask, cache, past)[:, -1], cache
    n, total = len(lengths), fed.shape[1]
    logits = torch.empty(0)
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    for rows in groups:
        index = torch.tensor(rows, device=fed.device)
        lead = shared_left_padding(mask[index, :past])  # cached columns all its rows mask
        skip = total - max(lengths[r] for r in rows)  # new-token padding all its rows share
        kept = past - lead
        part = _group_cache(cache, index, lead, kept, total - skip)
        cut_fed = torch.cat([fed[index, lead:past], fed[index, skip:]], 1)
        cut_mask = torch.cat([mask[index, lead:past], mask[index, skip:]], 1)
        out = forward_new(forward, cut_fed, cut_mask, part, kept)[:, -1]
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


def _group_cache(cache: Cache, index: torch.Tensor, lead: int, kept: int, room: int) -> Cache:
    """The cached columns of rows `index` from `lead` on, with exactly `room` columns to fill."""
    part_layers = []
    for k, v in cache_layers(cache):
        # (rows, kv_heads, kept + room, head_dim), the first `kept` columns copied
        k_part, v_part = (empty_with_room(t, len(index), kept, room) for t in (k, v))
        k_part[:, :, :kept], v_part[:, :, :kept] = k[index, :, lead:], v[index, :, lead:]
        part_layers.append((k_part, v_part))
    return new_cache(part_layers, kept)
