"""Choosing the next token of every row of a batch, each row from its own random stream.

Drawing row by row keeps a row's sample independent of the other rows of the batch and of when
they leave it, so seeded samples do not depend on batching.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class TokenPicker:
    """Choose each row's next token (argmax, or a draw from that row's own random stream).

    Drawing row by row, each from its own generator, keeps a row's sample independent of the
    other rows of the batch and of when they leave it. Also gives the token's log-probability
    under the raw logits.
    """

    def __init__(self, temperature: float, top_p: float, generators: list[torch.Generator]):
        self.temperature = temperature
        self.top_p = top_p
        self.generators = generators

    def pick(self, scores: torch.Tensor, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next token and its log-probability for each row of `scores` ([len(rows), vocab]).

        `rows` are the batch rows the scores belong to, to draw from their own generators.
        """
        scores = scores.float()
        if self.temperature == 0:
            chosen = scores.argmax(-1)
        else:
            u = torch.cat(
                [torch.rand(1, generator=self.generators[r], device=scores.device) for r in rows]
            )
            chosen = self._sample(u, (scores / self.temperature).softmax(-1))
        logp = scores.gather(-1, chosen.unsqueeze(-1)).squeeze(-1) - scores.logsumexp(-1)
        return chosen, logp

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
