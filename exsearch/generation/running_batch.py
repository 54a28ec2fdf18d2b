"""The rows being decoded together, which rows can leave and new rows can join (refilling).

A batch whose rows finish at different times decodes ever fewer rows per step; on a CPU a step's
cost hardly falls with its rows, so the last long rows of a batch run at a fraction of its
throughput. Letting waiting prompts join as rows leave keeps the batch full. Joining puts two
batches side by side: each is left-padded to the wider one (padding is masked), and columns no
row uses any more are cut first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from exsearch.generation.padding import shared_left_padding
from exsearch.generation.prefix_cache import cache_layers, empty_with_room, new_cache


@dataclass
class RunningBatch:
    """Decoding state of a batch; batch position b decodes prompt `rows[b]` of the call.

    `fed` and `mask` cover every column the cache holds, (batch, columns); `positions` is the
    position of each row's last token, (batch, 1); `logits` are the scores of each row's next
    token, (batch, vocab).
    """

    rows: list[int]
    fed: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    cache: Cache
    logits: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)

    def keep_only(self, stay: list[int]) -> list[int]:
        """Keep the rows at batch positions `stay`; the others leave. Returns the new order.

        Each leaving row's place is taken by a staying row from the end of the batch, so the
        cache copies only the rows that move. Position b of the new batch holds what position
        `order[b]` held (the returned `order`).
        """
        kept = set(stay)
        size = len(stay)
        holes = [b for b in range(size) if b not in kept]
        movers = [b for b in stay if b >= size]
        order = list(range(size))
        for src, dst in zip(movers, holes, strict=True):
            order[dst] = src
        device = self.fed.device
        src, dst = torch.tensor(movers, device=device), torch.tensor(holes, device=device)
        for layer in self.cache.layers:  # the index tensors are built once, not per layer
            layer.move_rows(src, dst, size)
        index = torch.tensor(order, device=device)
        self.fed, self.mask = self.fed[index], self.mask[index]
        self.positions, self.logits = self.positions[index], self.logits[index]
        self.rows = [self.rows[b] for b in order]
        return order

    def append(self, tokens: torch.Tensor) -> None:
        """Add each row's chosen token, (batch, 1), as a new unmasked column, one position on.

        The model has not read it yet: the caller runs it and sets `logits`.
        """
        self.fed = torch.cat([self.fed, tokens], 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self), 1))], 1)
        self.positions = self.positions + 1

    def join(self, other: RunningBatch) -> RunningBatch:
        """One batch of this one's rows followed by `other`'s (their caches copied once)."""
        a, b = self._trimmed(), other._trimmed()
        width = max(a.fed.shape[1], b.fed.shape[1])
        layers = [
            (_stacked([ka, kb], width), _stacked([va, vb], width))
            for (ka, va), (kb, vb) in zip(cache_layers(a.cache), cache_layers(b.cache), strict=True)
        ]
        return RunningBatch(
            a.rows + b.rows,
            torch.cat([_pad_left(a.fed, width), _pad_left(b.fed, width)]),
            torch.cat([_pad_left(a.mask, width), _pad_left(b.mask, width)]),
            torch.cat([a.positions, b.positions]),
            new_cache(layers, width),
            torch.cat([a.logits, b.logits]),
        )

    def _trimmed(self) -> RunningBatch:
        """The same rows without the leading columns that every row has masked (views)."""
        start = shared_left_padding(self.mask)
        if start == 0:
            return self
        layers = [(k[:, :, start:], v[:, :, start:]) for k, v in cache_layers(self.cache)]
        return RunningBatch(
            self.rows,
            self.fed[:, start:],
            self.mask[:, start:],
            self.positions,
            new_cache(layers),
            self.logits,
        )


def _stacked(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """Keys (or values) of `parts` one after the other by row, in one buffer.

    Each part is right-aligned to `width` columns (left padding), and the buffer has room for
    the tokens still to be decoded.
    """
    buf = empty_with_room(parts[0], sum(p.shape[0] for p in parts), width)
    start = 0
    for p in parts:
        buf[start : start + p.shape[0], :, : width - p.shape[2]].zero_()
        buf[start : start + p.shape[0], :, width - p.shape[2] : width] = p
        start += p.shape[0]
    return buf


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """`t` with zero columns added on the left, up to `width` columns.

    The column axis is dim 1 of ids and masks, (batch, columns), and dim 2 of keys and values,
    (batch, heads, columns, head_dim).
    """
    axis = 1 if t.dim() == 2 else 2
    missing = width - t.shape[axis]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], axis)
