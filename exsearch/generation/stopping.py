"""When a row of the `hf` decoding loop is done, and the `Completion` it becomes.

Kept apart from the loop (`hf.py`) because it is pure bookkeeping on token ids and text: it
never touches the model or a tensor, and the rules it follows (EOS, stop strings, the token
limit; the text kept up to and including its stop string) are those of `decoding.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from exsearch.generation.base import Completion
from exsearch.generation.decoding import cut_at_stop


@dataclass
class Row:
    """One sequence being decoded: what it generated and how it ended."""

    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    finish: Literal["stop", "length"] | None = None
    stop: str | None = None


class StopCheck:
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

    def update(self, row: Row) -> bool:
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

    def completion(self, row: Row) -> Completion:
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
