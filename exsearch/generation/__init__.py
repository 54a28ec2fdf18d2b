"""Text generation behind one narrow interface, so the agent never touches an engine.

A backend takes already-templated prompt strings and returns `Completion`s (`base.py`): `hf`
(`hf.py`: transformers in-process, with its own decoding loop, prefix cache and per-row
sampling) or `openai` (`openai.py`: any OpenAI-compatible server such as vLLM). Both follow the
decoding rules of `decoding.py`. Another engine only has to implement `Generator`'s four methods.
"""

from __future__ import annotations

from pathlib import Path

from exsearch.config import GenerationConfig, ModelConfig
from exsearch.generation.base import Completion, Generator

__all__ = ["Completion", "Generator", "make_generator"]


def make_generator(
    model_path: str | Path, model_cfg: ModelConfig, gen_cfg: GenerationConfig
) -> Generator:
    """The backend named by `generation.backend`, loaded from `model_path`."""
    if gen_cfg.backend == "hf":
        from exsearch.generation.hf import HFGenerator  # loads torch: only when asked for

        return HFGenerator.from_config(model_path, model_cfg, gen_cfg)
    if gen_cfg.backend == "openai":
        from exsearch.generation.openai import OpenAIGenerator

        return OpenAIGenerator.from_config(model_path, gen_cfg)
    raise ValueError(f"generation.backend: unknown backend {gen_cfg.backend!r}")
