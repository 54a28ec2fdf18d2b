"""Assertions shared by the generation backend tests."""

from __future__ import annotations

import pytest

from exsearch.generation import Completion


def same_outputs(a: list[Completion], b: list[Completion], logprob_abs: float = 1e-3) -> None:
    """Same texts, token counts and finish reasons; log-probs equal within `logprob_abs`."""
    assert [(c.text, c.n_tokens, c.finish, c.stop) for c in a] == [
        (c.text, c.n_tokens, c.finish, c.stop) for c in b
    ]
    assert [c.logprob for c in a] == pytest.approx([c.logprob for c in b], abs=logprob_abs)


def clean_span(text: str, start: int, length: int) -> str:
    """A substring of `text` from about `start` free of replacement characters."""
    for i in range(start, len(text) - length):
        span = text[i : i + length]
        if "\ufffd" not in span and span.strip():
            return span
    raise AssertionError(f"no clean span in {text!r}")
