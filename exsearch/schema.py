"""The two record shapes every reader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Question:
    """A question with its gold answers; `supporting_titles` is empty when the source has none."""

    id: str
    question: str
    answers: list[str]
    dataset: str
    supporting_titles: list[str] = field(default_factory=list)
    # Reader-specific gold structure (supporting sentences, decomposition) that warm-up needs.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Question:
        return cls(
            id=str(d["id"]),
            question=d["question"],
            answers=list(d["answers"]),
            dataset=d.get("dataset", ""),
            supporting_titles=list(d.get("supporting_titles") or []),
            extra=dict(d.get("extra") or {}),
        )


@dataclass(frozen=True)
class Passage:
    """One retrievable unit of text."""

    id: str
    title: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Passage:
        return cls(id=str(d["id"]), title=d.get("title", ""), text=d["text"])
