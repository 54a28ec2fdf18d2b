"""Text generation behind one narrow interface, so the agent never touches an engine.

A backend takes already-templated prompt strings and returns `Completion`s: `hf`
(`exsearch.hf_backend`, transformers in-process) or `openai` (`exsearch.served`, any
OpenAI-compatible server such as vLLM). Another engine only has to implement `Generator`'s four
methods and follow `exsearch.decoding`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from exsearch.config import GenerationConfig, ModelConfig


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
    """What the agent needs from a backend."""

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

    def reset(self) -> None:
        """Forget what earlier calls left behind (e.g. reusable keys/values).

        After a reset the next call's outputs depend on its own inputs only, bit for bit; a
        resumable job resets before each unit of work so that a rerun of one unit alone gives
        the bytes an uninterrupted run gave (in bfloat16, reused keys/values computed in another
        batch differ in the last bits from freshly computed ones).
        """
        ...


def make_generator(
    model_path: str | Path, model_cfg: ModelConfig, gen_cfg: GenerationConfig
) -> Generator:
    """The backend named by `generation.backend`, loaded from `model_path`."""
    if gen_cfg.backend == "hf":
        from exsearch.hf_backend import HFGenerator  # imports this module; loads torch

        return HFGenerator.from_config(model_path, model_cfg, gen_cfg)
    if gen_cfg.backend == "openai":
        from exsearch.served import OpenAIGenerator  # imports this module

        return OpenAIGenerator.from_config(model_path, gen_cfg)
    raise ValueError(f"generation.backend: unknown backend {gen_cfg.backend!r}")
