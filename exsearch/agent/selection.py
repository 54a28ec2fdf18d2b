"""The document-selection action (ExSearch-Zoo, METHOD.md §5): which candidates the model keeps.

With `agent.select_from > 0` a search lists that many candidates and the model answers with
`<select>[2] > [1] > [5]</select>`; the agent shows only the passages it named, in its order.
A selection that names no valid candidate is not an error: the agent shows the retrieval order's
first passages instead, as it would without selection, and the step says so.

    sel = parse_selection("<select>[2] > [1]</select>", n_candidates=10, keep=5)
    sel.numbers, sel.fallback  # (2, 1), False
    selected(candidates, sel)  # [candidates[1], candidates[0]]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from exsearch import prompts

T = TypeVar("T")

_SELECTION = re.compile(
    re.escape(prompts.SELECT_OPEN) + r"(.*?)" + re.escape(prompts.SELECT_CLOSE), re.DOTALL
)
_NUMBER = re.compile(r"\[\s*(\d+)\s*\]")


@dataclass(frozen=True)
class Selection:
    """The candidates to show: 1-based numbers as the model saw them, most useful first."""

    numbers: tuple[int, ...]
    fallback: bool = False  # the turn named no valid candidate: the retrieval order was taken


def retrieval_order(n_candidates: int, keep: int) -> Selection:
    """The fallback: the first `keep` candidates as the retriever ranked them."""
    return Selection(tuple(range(1, min(keep, n_candidates) + 1)), fallback=True)


def parse_selection(text: str, n_candidates: int, keep: int) -> Selection:
    """The candidates a selection turn names: `[n]` numbers inside the select tags, in order.

    Repeats and numbers outside 1..n_candidates are dropped and at most `keep` are kept. No
    closed `<select>…</select>`, or no valid number in it, gives `retrieval_order`.
    """
    m = _SELECTION.search(text)
    numbers: list[int] = []
    for found in _NUMBER.findall(m.group(1) if m else ""):
        n = int(found)
        if 1 <= n <= n_candidates and n not in numbers:
            numbers.append(n)
    if not numbers:
        return retrieval_order(n_candidates, keep)
    return Selection(tuple(numbers[:keep]))


def selected(candidates: Sequence[T], selection: Selection) -> list[T]:
    """The candidates `selection` names, in its order (its numbers are 1-based)."""
    return [candidates[n - 1] for n in selection.numbers]
