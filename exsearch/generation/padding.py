"""Pad rows of token ids into one batch tensor: the one padding helper of the project.

Generation pads on the left, so every row's next token is the last column; scoring pads on the
right, so a token keeps its index in its row. Both need the attention mask that goes with it.

    ids, mask = pad_rows([[5, 6, 7], [8]], pad_id=0, side="left")
    # ids  = [[5, 6, 7], [0, 0, 8]],  mask = [[1, 1, 1], [0, 0, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch


def pad_rows(
    rows: Sequence[Sequence[int]],
    pad_id: int,
    side: Literal["left", "right"] = "left",
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (padded with `pad_id`) and attention mask (1 on a row's own tokens) of `rows`.

    Both are int64 tensors of shape (len(rows), width); `width` defaults to the longest row.
    `side="left"` right-aligns each row (for generation), `side="right"` left-aligns it.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max((len(r) for r in rows), default=0) if width is None else width
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (rows, width)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (rows, width)
    for i, r in enumerate(rows):
        if not len(r):
            continue
        # The columns row i occupies: its last len(r) (left padding) or its first len(r).
        cols = slice(width - len(r), None) if side == "left" else slice(None, len(r))
        ids[i, cols] = torch.as_tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def shared_left_padding(mask: torch.Tensor) -> int:
    """How many leading columns of `mask`, (rows, width), every row masks (width if all do).

    Those columns hold only left padding: a batch can drop them without changing what any row
    attends to or any position (positions count unmasked tokens only).
    """
    used = mask.any(0).nonzero()  # (used columns, 1)
    return int(used[0]) if len(used) else mask.shape[1]
