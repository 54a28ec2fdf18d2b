"""The generation interface: what a backend returns (`Completion`) and offers (`Generator`).

Kept apart from the backends (`hf.py`, `openai.py`) so that they and the agent share it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from exsearch.schema import Trajectory


@dataclass(frozen=True)
class Completion:
    """One generated continuation.

    Attributes:
        text: The generated text; it ends with the stop string that ended it (kept), and never
            contains the EOS token.
        n_tokens: Generated tokens consumed, including the EOS token or the token that completed
            the stop string.
        logprob: Sum of the model's log-probabilities (temperature 1, no top-p) of those tokens,
            or None if the backend cannot tell.
        finish: 'stop' (a stop string or EOS) or 'length' (max_new_tokens reached).
        stop: The stop string that ended generation; None for EOS or length.
    """

    text: str
    n_tokens: int
    logprob: float | None
    finish: Literal["stop", "length"]
    stop: str | None = None


@runtime_checkable
class Generator(Protocol):
    """What the agent (and the E-step's scoring of its trajectories) needs from a backend."""

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        stop: list[str],
        temperature: float,
        top_p: float,
        seed: int | Sequence[int] | None,
    ) -> list[Completion]:
        """Continue each prompt; temperature 0 is greedy; one Completion per prompt, in order."""
        ...

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token count of each text, as the model sees it inside a prompt."""
        ...

    def chat_prompt(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        """Render chat messages with the model's chat template."""
        ...

    def gold_answer_scores(
        self, trajectories: Sequence[Trajectory], *, progress: bool = True
    ) -> list[float]:
        """The E-step's score of each trajectory: its gold answer's mean token log-prob.

        NaN for an empty gold answer; one float per trajectory, in order.
        """
        ...

    def reset(self) -> None:
        """Forget what earlier calls left behind (e.g. reusable keys/values).

        After a reset the next call's outputs depend on its own inputs only, bit for bit; a
        resumable job resets before each unit of work so that a rerun of one unit alone gives
        the bytes an uninterrupted run gave (in bfloat16, reused keys/values computed in another
        batch differ in the last bits from freshly computed ones).
        """
        ...
