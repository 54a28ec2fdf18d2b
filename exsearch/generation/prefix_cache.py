"""Reuse attention keys/values across calls when a prompt extends a sequence seen before.

The agent's prompt for turn t+1 is its prompt for turn t, the text it then generated and the new
documents. Re-encoding all of it every turn makes prompt processing grow with the square of the
number of turns, and on a CPU it dominates the loop. After each batch the backend keeps, per
row, the keys/values of the tokens the model processed; a later prompt reuses those of its
longest *token* prefix shared with any kept row, and only the rest goes through the model.
Matching on token ids (not text) means the model sees exactly the tokens it would see without
the cache: where re-tokenising the chat changes a token at a turn boundary, reuse stops there.

Rows of one batch reuse prefixes of different lengths. Kept positions are packed to the right
of the cache (left padding) and the new tokens follow, also left-padded, so a row may have a
masked gap between its cached and new tokens. Positions count only unmasked tokens, so every
token keeps the position it had when its keys were computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicLayer

from exsearch.generation.padding import pad_rows


@dataclass
class _Entry:
    """Keys/values of one processed token sequence (per layer: [kv_heads, len(tokens), dim])."""

    tokens: np.ndarray
    layers: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class BatchInputs:
    """What one generate call needs: ids and mask over cached + new tokens, and the cache."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: Cache | None


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class GrowingLayer(DynamicLayer):
    """A layer's keys/values in a buffer with spare room at the end.

    transformers' dynamic layer appends by concatenation, copying the whole cache at every
    decoding step; at long contexts on a CPU that copy is a fifth of the step. Here a step
    writes in place, and the buffer is copied only when it is full (it then grows by half).
    A layer can also take over buffers its caller filled (`holding`): a batch's cache assembled
    with room for the tokens still to come is then never copied again.
    """

    @classmethod
    def holding(
        cls, keys: torch.Tensor, values: torch.Tensor, length: int | None = None
    ) -> GrowingLayer:
        """A layer over `keys`/`values` ([batch, heads, capacity, dim]), taken without a copy.

        The first `length` columns (default: all) hold keys/values; appends fill the rest in
        place, so the caller must not write to the buffers afterwards.
        """
        layer = cls()
        layer.lazy_initialization(keys, values)
        n = keys.shape[2] if length is None else length
        layer._keys, layer._values = keys, values
        layer.keys, layer.values = keys[:, :, :n], values[:, :, :n]
        return layer

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new keys/values ([batch, heads, new, dim]); return all of them (views)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, add, rows = self.get_seq_length(), key_states.shape[-2], key_states.shape[0]
        buf = getattr(self, "_keys", None)
        if buf is None or n + add > buf.shape[-2]:
            room = n + add + max(ROOM, (n + add) // 2)
            self._keys = _grown(self.keys, key_states, room)
            self._values = _grown(self.values, value_states, room)
        self._keys[:rows, :, n : n + add] = key_states
        self._values[:rows, :, n : n + add] = value_states
        self.keys, self.values = self._keys[:rows, :, : n + add], self._values[:rows, :, : n + add]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows `indices` (one copy, spare room included)."""
        n = self.get_seq_length()
        if n > 0:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self.keys, self.values = self._keys[:, :, :n], self._values[:, :, :n]

    def move_rows(self, src: torch.Tensor, dst: torch.Tensor, rows: int) -> None:
        """Copy rows `src` over rows `dst` (index tensors); then keep the first `rows` rows.

        Rows leaving a batch are overwritten by rows from its end, so only the moved rows are
        copied, where `batch_select_indices` copies the whole cache.
        """
        n = self.get_seq_length()
        if len(src):
            self._keys[dst, :, :n] = self._keys[src, :, :n]
            self._values[dst, :, :n] = self._values[src, :, :n]
        self.keys, self.values = self._keys[:rows, :, :n], self._values[:rows, :, :n]


# Columns of room a cache is given beyond what it holds: a decoding turn's worth.
ROOM = 128


def _grown(old: torch.Tensor, new: torch.Tensor, room: int) -> torch.Tensor:
    buf = new.new_empty((*new.shape[:2], room, new.shape[3]))
    if old.numel():
        buf[:, :, : old.shape[2]] = old
    return buf


def empty_with_room(like: torch.Tensor, rows: int, columns: int, room: int = ROOM) -> torch.Tensor:
    """An uninitialised [rows, heads, columns + room, dim] buffer for keys (or values) like `like`.

    The caller writes every one of the first `columns` columns, zeros for masked padding (it
    must hold finite values: attention multiplies it by a zero weight); the room is written
    by appends before anything reads it.
    """
    return like.new_empty((rows, like.shape[-3], columns + room, like.shape[-1]))


def new_cache(
    layers: Sequence[tuple[torch.Tensor, torch.Tensor]] = (), length: int | None = None
) -> Cache:
    """A cache of `GrowingLayer`s over `layers` ((keys, values) per layer), taken without a copy.

    The first `length` columns (default: all) hold keys/values; the rest is room. With no
    layers, each is created by the first update.
    """
    if not layers:
        return Cache(layer_class_to_replicate=GrowingLayer)
    return Cache(layers=[GrowingLayer.holding(k, v, length) for k, v in layers])


def cache_layers(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer, each [batch, kv_heads, length, dim]."""
    return [(layer.keys, layer.values) for layer in cache.layers]


class PrefixCache:
    """Keys/values of recently processed sequences, kept up to `max_tokens` tokens in all.

    Oldest entries go first when the budget is exceeded; an entry that is a prefix of a newer
    one is dropped at once (the newer one serves every prompt the old one could).
    """

    def __init__(self, max_tokens: int):
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        self.max_tokens = max_tokens
        self._entries: list[_Entry] = []
        self.prompt_tokens = 0  # prompt tokens seen by prepare()
        self.reused_tokens = 0  # of which taken from the cache

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def kept_tokens(self) -> int:
        """Tokens whose keys/values are held now."""
        return sum(len(e.tokens) for e in self._entries)

    def sequences(self) -> list[np.ndarray]:
        """The token ids of every kept sequence, oldest first."""
        return [e.tokens for e in self._entries]

    def clear(self) -> None:
        """Drop every entry and reset the counts (e.g. after the model's weights change)."""
        self._entries.clear()
        self.prompt_tokens = self.reused_tokens = 0

    def match(self, row: Sequence[int]) -> tuple[_Entry | None, int]:
        """The entry sharing the longest prefix with `row`, and how many tokens to reuse.

        At most len(row) - 1 tokens are reused: the last prompt token must go through the model
        to give the logits of the first new token.
        """
        arr = np.asarray(row, dtype=np.int64)
        best, best_n = None, 0
        for e in self._entries:
            n = common_prefix(arr, e.tokens)
            if n > best_n:
                best, best_n = e, n
        return best, min(best_n, len(row) - 1)

    def prepare(
        self,
        rows: Sequence[Sequence[int]],
        pad_id: int,
        device: torch.device,
        *,
        count: bool = True,
        reuse_at_most: Sequence[int] | None = None,
    ) -> BatchInputs:
        """Inputs for a batch of prompts, reusing cached prefixes where there are any.

        `count=False` leaves the reuse statistics alone (for work that is not a prompt).
        `reuse_at_most[i]` caps what row i reuses, so that the model sees its later tokens
        (to score them, say).
        """
        matches = [self.match(r) for r in rows] if self._entries else [(None, 0)] * len(rows)
        if reuse_at_most is not None:
            matches = [
                (e, min(n, cap)) if min(n, cap) > 0 else (None, 0)
                for (e, n), cap in zip(matches, reuse_at_most, strict=True)
            ]
        reused = sum(n for _, n in matches)
        if count:
            self.prompt_tokens += sum(len(r) for r in rows)
            self.reused_tokens += reused
        if reused == 0:
            ids, mask = pad_rows(rows, pad_id, "left")
            return BatchInputs(ids.to(device), mask.to(device), None)
        width = max(n for _, n in matches)
        reuse = [n for _, n in matches]
        cached_ids, cached_mask = pad_rows(
            [r[:n] for r, n in zip(rows, reuse, strict=True)], pad_id, "left", width
        )
        new_ids, new_mask = pad_rows(
            [r[n:] for r, n in zip(rows, reuse, strict=True)], pad_id, "left"
        )
        template = next(e for e, n in matches if n).layers
        # Room for the new tokens and a decoding turn: the batch's cache is not copied again.
        room = new_ids.shape[1] + ROOM
        layers = []
        for layer, (k_like, v_like) in enumerate(template):
            keys = empty_with_room(k_like, len(rows), width, room)
            values = empty_with_room(v_like, len(rows), width, room)
            for i, (e, n) in enumerate(matches):
                keys[i, :, : width - n].zero_()
                values[i, :, : width - n].zero_()
                if n:
                    keys[i, :, width - n : width] = e.layers[layer][0][:, :n]
                    values[i, :, width - n : width] = e.layers[layer][1][:, :n]
            layers.append((keys, values))
        return BatchInputs(
            torch.cat([cached_ids, new_ids], 1).to(device),
            torch.cat([cached_mask, new_mask], 1).to(device),
            new_cache(layers, width),
        )

    def keep(
        self,
        sequences: torch.Tensor,
        mask: torch.Tensor,
        cache: Cache,
        rows: Sequence[int] | None = None,
    ) -> None:
        """Keep the processed tokens of batch rows `rows` (default: all) of a running batch.

        `sequences` are the token ids the cache covers ([batch, columns]; a trailing column
        without keys/values is ignored) and `mask` marks, over the same columns, the tokens
        that belong to each row (not padding, nor gaps).
        """
        if self.max_tokens == 0:
            return
        layers = cache_layers(cache)
        length = layers[0][0].shape[2]
        for i in range(sequences.shape[0]) if rows is None else rows:
            pos = mask[i, :length].nonzero().flatten()
            if len(pos) == 0:
                continue
            entry = _Entry(
                sequences[i, pos].cpu().numpy(),
                [(k[i][:, pos], v[i][:, pos]) for k, v in layers],  # indexing copies
            )
            self._entries = [e for e in self._entries if not _is_prefix(e.tokens, entry.tokens)]
            self._entries.append(entry)
        total = self.kept_tokens
        while self._entries and total > self.max_tokens:
            total -= len(self._entries.pop(0).tokens)


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the prefix every row starts with."""
    first = np.asarray(rows[0], dtype=np.int64)
    return min(common_prefix(first, np.asarray(r, dtype=np.int64)) for r in rows)


def _is_prefix(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) <= len(b) and common_prefix(a, b) == len(a)
