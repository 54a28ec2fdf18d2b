"""The search agent: think → search → record → answer, and the LLM-free warm-up trajectories.

`loop.py` runs the agent over many trajectories at once (`SearchAgent`); `selection.py` reads
its optional document-selection turn; `warmup.py` writes warm-up trajectories from supporting
facts; `warmup_set.py` picks the warm-up's questions and settings; `rag_sft.py` writes the
one-shot RAG chats of the `rag_sft` baseline.
"""

from exsearch.agent.loop import METHODS, Decoding, SearchAgent
from exsearch.agent.rag_sft import questions_trained_on, rag_sft_examples
from exsearch.agent.selection import Selection, parse_selection
from exsearch.agent.warmup import WarmupShape, build_trajectories
from exsearch.agent.warmup_set import (
    derived_trajectories,
    seeded_draw,
    teacher_trajectories,
    warmup_examples,
    warmup_questions,
    warmup_train_config,
)

__all__ = [
    "METHODS",
    "Decoding",
    "SearchAgent",
    "Selection",
    "WarmupShape",
    "build_trajectories",
    "derived_trajectories",
    "parse_selection",
    "questions_trained_on",
    "rag_sft_examples",
    "seeded_draw",
    "teacher_trajectories",
    "warmup_examples",
    "warmup_questions",
    "warmup_train_config",
]
