"""The record shapes every reader produces and every stage consumes.

Questions and passages come from the data readers; trajectories from the agent and the warm-up.
"""

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


@dataclass(frozen=True)
class Step:
    """One search step of a trajectory: the query, what came back, what the model kept.

    `passage_ids` are the passages shown to the model. With document selection on they are the
    ones it selected, in its order, from `candidate_ids` (the retrieval order); a selection that
    named no valid candidate kept the retrieval order and sets `selection_fallback`. Without
    selection `candidate_ids` is empty and neither key is written, so records read as before.
    `forced` marks a search the E-step's budget forcing made (`sample.min_searches`): the model
    had ended its turn there and was made to search instead; written only where true.
    """

    query: str
    passage_ids: list[str] = field(default_factory=list)
    record: str | None = None
    think: str | None = None
    candidate_ids: list[str] = field(default_factory=list)
    selection_fallback: bool = False
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.candidate_ids:
            del d["candidate_ids"], d["selection_fallback"]
        if not self.forced:
            del d["forced"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        return cls(
            query=d["query"],
            passage_ids=list(d.get("passage_ids") or []),
            record=d.get("record"),
            think=d.get("think"),
            candidate_ids=list(d.get("candidate_ids") or []),
            selection_fallback=bool(d.get("selection_fallback", False)),
            forced=bool(d.get("forced", False)),
        )


@dataclass(frozen=True)
class TokenCounts:
    """Tokens the model generated over a whole trajectory, and the length of its last prompt."""

    generated: int
    last_prompt: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenCounts:
        return cls(generated=d["generated"], last_prompt=d["last_prompt"])


# How a trajectory that kept the format to the end finishes: it answered when done, or when
# the search budget ran out. `malformed` (a turn with no action) and `length` (a turn or the
# context cut by a token limit) mark broken ones.
WELL_FORMED_ENDINGS = frozenset({"final", "max_steps"})


@dataclass(frozen=True, kw_only=True)
class Trajectory:
    """One chat of the agent with the search environment, and what it found and answered.

    Two kinds share this record. The agent's (`SearchAgent.run`: sampled, evaluated) carries
    what decoding produced: `temperature`, `tokens` and `logprob`. A warm-up trajectory is
    written without a model (`exsearch.agent.warmup`): those three are None and its dict leaves them
    out. A trajectory read from a file needs only `qid` and `messages` (a teacher's file may
    hold no more); the other fields then take their defaults.
    """

    qid: str
    sample: int = 0  # which of a question's samples; (qid, sample) keys the E-step weights
    seed: int | None = None  # the run's decoding seed; None without a model
    temperature: float | None = None
    method: str | None = None  # agent, rag, direct or warmup
    dataset: str = ""
    question: str = ""
    answers: list[str] = field(default_factory=list)
    supporting_titles: list[str] = field(default_factory=list)
    messages: list[dict[str, str]]
    steps: list[Step] = field(default_factory=list)
    prediction: str = ""
    finish_reason: str | None = None  # final, max_steps, malformed or length
    tokens: TokenCounts | None = None
    logprob: float | None = None  # summed over the generated tokens; None if a turn had none
    # The E-step's score (weighting.py): mean log-prob of the gold answer's tokens after this
    # chat, under the model that sampled it; set where it was sampled, None elsewhere.
    gold_score: float | None = None
    # Share of the question's gold supporting titles among the passages it was shown (0–1), set
    # by evaluation (`evaluate_methods`), so a report can pair it question by question; None
    # elsewhere, or for a question without supporting titles.
    support_recall: float | None = None

    @property
    def key(self) -> tuple[str, int]:
        """(question id, sample number): what joins a trajectory to its E-step weight."""
        return self.qid, self.sample

    @property
    def n_searches(self) -> int:
        return len(self.steps)

    @property
    def well_formed(self) -> bool:
        """Whether every turn parsed to the end (`WELL_FORMED_ENDINGS`)."""
        return self.finish_reason in WELL_FORMED_ENDINGS

    @property
    def decoded(self) -> bool:
        """Whether a model generated it (the agent), rather than the warm-up's rules."""
        return self.tokens is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON line: keys in the order both kinds have always been written in."""
        d: dict[str, Any] = {"qid": self.qid, "sample": self.sample, "seed": self.seed}
        if self.decoded:
            d["temperature"] = self.temperature
        d |= {
            "method": self.method,
            "dataset": self.dataset,
            "question": self.question,
            "answers": list(self.answers),
            "supporting_titles": list(self.supporting_titles),
            "messages": [dict(m) for m in self.messages],
            "steps": [s.to_dict() for s in self.steps],
            "prediction": self.prediction,
            "finish_reason": self.finish_reason,
            "n_searches": self.n_searches,
        }
        if self.decoded:
            d |= {"tokens": self.tokens.to_dict(), "logprob": self.logprob}
        if self.gold_score is not None:
            d["gold_score"] = self.gold_score
        if self.support_recall is not None:
            d["support_recall"] = self.support_recall
        return d

    @classmethod
    def of_question(cls, q: Question, **fields: Any) -> Trajectory:
        """A trajectory on `q`, carrying the question's id, dataset, text, answers and titles."""
        return cls(
            qid=q.id,
            dataset=q.dataset,
            question=q.question,
            answers=q.answers,
            supporting_titles=q.supporting_titles,
            **fields,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        """Read a record written by `to_dict` (or a teacher's, with at least qid and messages).

        Raises:
            KeyError: `qid` or `messages` is missing.
        """
        tokens = d.get("tokens")
        return cls(
            qid=str(d["qid"]),
            sample=int(d.get("sample", 0)),
            seed=d.get("seed"),
            temperature=d.get("temperature"),
            method=d.get("method"),
            dataset=d.get("dataset", ""),
            question=d.get("question", ""),
            answers=list(d.get("answers") or []),
            supporting_titles=list(d.get("supporting_titles") or []),
            messages=list(d["messages"]),
            steps=[Step.from_dict(s) for s in d.get("steps") or []],
            prediction=d.get("prediction") or "",
            finish_reason=d.get("finish_reason"),
            tokens=None if tokens is None else TokenCounts.from_dict(tokens),
            logprob=d.get("logprob"),
            gold_score=d.get("gold_score"),
            support_recall=d.get("support_recall"),
        )
