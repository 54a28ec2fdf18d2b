"""The search agent: think → search → record → answer, run over many trajectories at once.

Each round makes one batched generation over every live trajectory and one batched BM25 search
over every query issued in it; trajectories that finish leave the batch. The same loop runs the
`direct` and `rag` baselines, which start at the answer turn. With `agent.select_from > 0` the
agent's searches list candidates and a selection turn (exsearch.agent.selection) picks the
passages shown.

With `min_searches` (the E-step's `sample.min_searches`) a sample that ends its turn before it
has searched that often is made to search instead: the turn is cut where the model wrote
`<finish>` or `<answer>` and generated again from there with `<search>` written for it, once per
turn (budget forcing, as s1 forces a model to keep thinking). Evaluation never forces.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from tqdm.auto import tqdm

from exsearch import prompts
from exsearch.agent.selection import parse_selection, selected
from exsearch.config import AgentConfig, Method
from exsearch.data import passage_id
from exsearch.generation import Generator
from exsearch.metrics import normalize_answer
from exsearch.retrieval import Retriever, format_passage
from exsearch.schema import Passage, Question, Step, TokenCounts, Trajectory

log = logging.getLogger(__name__)

FinishReason = Literal["final", "max_steps", "malformed", "length"]

# The ways a trajectory starts (`SearchAgent._start`): searching (`agent`); reading the
# question's passages once (`rag`); reading them, writing one follow-up query and reading its
# passages too, with no learned policy (`iter_rag`, after IRCoT and Iter-RetGen); reading the
# gold supporting paragraphs (`oracle`, the reading ceiling); or answering at once (`direct`).
# `evaluate.methods` (exsearch.config's `Method`) lists the same names;
# tests/test_registries.py checks it.
METHODS: tuple[str, ...] = ("agent", "rag", "iter_rag", "oracle", "direct")

# Below this many words per passage the budget is met by dropping passages instead.
_MIN_PASSAGE_WORDS = 8
# The phases whose turn the model writes with `max_new_tokens` (the answer has its own limit).
_ACTING = ("act", "query", "select")


@dataclass(frozen=True)
class Decoding:
    """Decoding settings of one run; temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class _Rollout:
    """Mutable state of one trajectory while it is live."""

    question: Question
    sample: int
    messages: list[dict]
    phase: Literal["act", "query", "select", "answer", "done"] = "act"
    steps: list[Step] = field(default_factory=list)
    # Message index → passages shown there, so documents can be re-rendered shorter.
    shown: dict[int, list[Passage]] = field(default_factory=dict)
    # The same for candidate lists (selection on); the last one is what the model selects from.
    listed: dict[int, list[Passage]] = field(default_factory=dict)
    select: bool = False  # the agent selects from `select_from` candidates after each search
    passage_words: int = 0
    min_searches: int = 0  # searches made before an ending is accepted (E-step budget forcing)
    forced: str = ""  # the cut turn continued in the next generation, ending with <search>
    rag: bool = False  # the rag baseline's one user turn holds passages and question together
    follow_up: bool = False  # iter_rag: that turn asks for a query, whose passages come next
    finish_reason: FinishReason | None = None
    prediction: str = ""
    tokens_generated: int = 0
    prompt_tokens: int = 0
    logprob: float | None = 0.0

    def prefill(self) -> str:
        """Opening tag written for the model, to keep a small model inside the format.

        After a forced search it is the model's own cut turn with `<search>` appended.
        """
        if self.forced:
            return self.forced
        if self.phase == "answer":
            return prompts.ANSWER_OPEN
        if self.phase == "query":
            return prompts.SEARCH_OPEN
        if self.phase == "select":
            return prompts.SELECT_OPEN
        last = self.messages[-1]["content"]
        return prompts.RECORD_OPEN if last.startswith(prompts.DOCS_OPEN) else prompts.THINK_OPEN

    def to_answer_phase(self, reason: FinishReason) -> None:
        self.finish_reason = self.finish_reason or reason
        self.phase = "answer"
        self.forced = ""
        self.messages.append(
            {"role": "user", "content": prompts.answer_request(self.question.question)}
        )


class SearchAgent:
    """Runs trajectories for a batch of questions with one generator and one retriever."""

    def __init__(self, generator: Generator, retriever: Retriever | None, cfg: AgentConfig):
        self.gen = generator
        self.retriever = retriever
        self.cfg = cfg
        # Every passage shown so far, for scoring retrieval without reading the whole corpus.
        self.seen_passages: dict[str, Passage] = {}

    # ---------------------------------------------------------------- public
    def run(
        self,
        questions: Sequence[Question],
        *,
        method: Method = "agent",
        samples: int = 1,
        decoding: Decoding | None = None,
        min_searches: int = 0,
        progress: bool = True,
    ) -> list[Trajectory]:
        """Run `samples` trajectories per question; return one record per trajectory.

        `min_searches` > 0 (the agent only) forces searches, as the module doc says.
        """
        decoding = decoding or Decoding()
        if method not in ("direct", "oracle") and self.retriever is None:
            raise ValueError(f"method '{method}' needs a retriever")
        if min_searches > self.cfg.max_steps:
            raise ValueError(
                f"min_searches ({min_searches}) is more than agent.max_steps "
                f"({self.cfg.max_steps}) allows"
            )
        rollouts = [self._start(q, j, method) for q in questions for j in range(samples)]
        if method == "agent":
            for r in rollouts:
                r.min_searches = min_searches
        started = time.perf_counter()
        bar = tqdm(total=len(rollouts), desc=f"{method} trajectories", disable=not progress)
        round_idx = 0
        while live := [r for r in rollouts if r.phase != "done"]:
            self._round(live, decoding, seed=decoding.seed + round_idx)
            bar.update(sum(r.phase == "done" for r in live))
            round_idx += 1
        bar.close()
        log.info(
            "%s: %d trajectories in %d rounds, %.1fs",
            method,
            len(rollouts),
            round_idx,
            time.perf_counter() - started,
        )
        return [self._record(r, method, decoding) for r in rollouts]

    # ---------------------------------------------------------------- rounds
    def _start(self, q: Question, sample: int, method: Method) -> _Rollout:
        if method == "agent":
            select = self.cfg.select_from > 0
            system = (
                prompts.select_system_prompt(self.cfg.top_k) if select else prompts.SYSTEM_PROMPT
            )
            msgs = [
                {"role": "system", "content": system},
                {"role": "user", "content": prompts.question_turn(q.question)},
            ]
            return _Rollout(
                q, sample, msgs, passage_words=self.cfg.passage_max_words, select=select
            )
        if method == "direct":
            msgs = [
                {"role": "system", "content": prompts.DIRECT_SYSTEM_PROMPT},
                {"role": "user", "content": prompts.question_turn(q.question)},
            ]
            return _Rollout(q, sample, msgs, phase="answer", finish_reason="final")
        if method == "oracle":
            passages, query = gold_passages(q), ORACLE_QUERY
        else:
            hits = self.retriever.search([q.question], self.cfg.top_k)[0]
            passages, query = [h.passage for h in hits], q.question
        self.seen_passages.update((p.id, p) for p in passages)
        follow_up = method == "iter_rag"
        system = prompts.ITER_RAG_SYSTEM_PROMPT if follow_up else prompts.RAG_SYSTEM_PROMPT
        r = _Rollout(
            q,
            sample,
            [{"role": "system", "content": system}],
            phase="query" if follow_up else "answer",
            finish_reason=None if follow_up else "final",
            passage_words=self.cfg.passage_max_words,
            rag=True,
            follow_up=follow_up,
        )
        r.messages.append({"role": "user", "content": ""})
        r.shown[1] = passages
        r.steps.append(Step(query=query, passage_ids=[p.id for p in passages]))
        self._render_documents(r)
        return r

    def _round(self, live: list[_Rollout], decoding: Decoding, seed: int) -> None:
        ready, prompt_texts = [], []
        for r in live:
            text = self._fit_prompt(r)
            if text is None and r.phase in _ACTING:  # over budget, passages dropped
                r.to_answer_phase("length")
                text = self._fit_prompt(r)
            if text is None:  # not even the answer request fits: no answer
                r.finish_reason = r.finish_reason or "length"
                self._finish(r, "")
                continue
            ready.append(r)
            prompt_texts.append(text)
        if not ready:
            return
        acting = any(r.phase in _ACTING for r in ready)
        stops = prompts.ACTION_STOPS + prompts.ANSWER_STOPS
        if any(r.select for r in ready):  # one method per run: the same stops every round
            stops = stops + prompts.SELECT_STOPS
        completions = self.gen.generate(
            prompt_texts,
            max_new_tokens=self.cfg.max_new_tokens if acting else self.cfg.answer_max_new_tokens,
            stop=stops,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            seed=seed,
        )
        searching: list[tuple[_Rollout, str]] = []
        for r, c in zip(ready, completions, strict=True):
            r.tokens_generated += c.n_tokens
            r.logprob = None if (r.logprob is None or c.logprob is None) else r.logprob + c.logprob
            text = r.prefill() + c.text
            if r.phase == "answer":
                self._take_answer(r, text)
            elif r.phase == "query":
                if (query := self._take_query(r, text)) is not None:
                    searching.append((r, query))
            elif r.phase == "select":
                self._take_selection(r, text)
            elif (query := self._take_action(r, text, c.finish)) is not None:
                searching.append((r, query))
        if searching:
            self._search(searching)

    def _take_answer(self, r: _Rollout, text: str) -> None:
        answer = prompts.parse_turn(text).answer or ""
        self._finish(r, answer)

    def _finish(self, r: _Rollout, answer: str) -> None:
        r.prediction = answer
        r.messages.append({"role": "assistant", "content": prompts.answer_turn(answer)})
        r.phase = "done"

    def _take_query(self, r: _Rollout, text: str) -> str | None:
        """iter_rag's follow-up query turn; no query is a malformed turn, answered at once."""
        r.messages.append({"role": "assistant", "content": text})
        query = prompts.parse_turn(text).query
        if not query:
            r.to_answer_phase("malformed")
            return None
        r.steps.append(Step(query=query))
        return query

    def _take_action(self, r: _Rollout, text: str, finish: str) -> str | None:
        """Apply one action turn; return the query to search, if any."""
        turn = prompts.parse_turn(text)
        was_forced, r.forced = bool(r.forced), ""
        ends = turn.answer is not None or turn.finish
        if ends and len(r.steps) < r.min_searches and not was_forced:
            r.forced = text[: _ending_start(text)] + prompts.SEARCH_OPEN
            # The kept part's log-prob is not separable from the cut completion's.
            r.logprob = None
            return None
        r.messages.append({"role": "assistant", "content": text})
        if turn.record is not None and r.steps and r.steps[-1].record is None:
            r.steps[-1] = replace(r.steps[-1], record=turn.record)
        if turn.answer is not None:  # answered without finishing first: accept it
            r.finish_reason = "final"
            r.prediction = turn.answer
            r.messages[-1]["content"] = text[: text.index(prompts.ANSWER_OPEN)] + (
                prompts.answer_turn(turn.answer)
            )
            r.phase = "done"
        elif turn.finish:
            r.to_answer_phase("final")
        elif turn.query is None:
            r.to_answer_phase("length" if finish == "length" else "malformed")
        elif len(r.steps) >= self.cfg.max_steps:
            r.to_answer_phase("max_steps")
        else:
            r.steps.append(Step(query=turn.query, think=turn.think, forced=was_forced))
            if any(_same_query(turn.query, s.query) for s in r.steps[:-1]):
                r.messages.append({"role": "user", "content": prompts.REPEATED_QUERY_NOTICE})
            else:
                return turn.query
        return None

    def _take_selection(self, r: _Rollout, text: str) -> None:
        """Show the candidates the selection turn names; a malformed one keeps retrieval order."""
        r.messages.append({"role": "assistant", "content": text})
        candidates = r.listed[max(r.listed)]
        selection = parse_selection(text, len(candidates), self.cfg.top_k)
        r.steps[-1] = replace(r.steps[-1], selection_fallback=selection.fallback)
        self._show(r, selected(candidates, selection))
        r.phase = "act"

    def _search(self, searching: list[tuple[_Rollout, str]]) -> None:
        wanted = [self.cfg.select_from if r.select else self.cfg.top_k for r, _ in searching]
        results = self.retriever.search([q for _, q in searching], max(wanted))
        for (r, _), hits, k in zip(searching, results, wanted, strict=True):
            passages = [h.passage for h in hits[:k]]
            if r.select and passages:  # list the candidates; the selection turn comes next
                r.steps[-1] = replace(r.steps[-1], candidate_ids=[p.id for p in passages])
                r.messages.append({"role": "user", "content": ""})
                r.listed[len(r.messages) - 1] = passages
                self._render_documents(r)
                r.phase = "select"
                continue
            self._show(r, passages)
            if r.phase == "query":  # iter_rag reads its one follow-up's passages, then answers
                r.to_answer_phase("final")

    def _show(self, r: _Rollout, passages: list[Passage]) -> None:
        """Show `passages` as a documents turn; they are the step's passages, the ones seen."""
        self.seen_passages.update((p.id, p) for p in passages)
        r.steps[-1] = replace(r.steps[-1], passage_ids=[p.id for p in passages])
        r.messages.append({"role": "user", "content": ""})
        r.shown[len(r.messages) - 1] = passages
        self._render_documents(r)

    # ---------------------------------------------------------------- budget
    def _render_documents(self, r: _Rollout) -> None:
        """(Re-)render every documents and candidates turn of `r` at its current passage length."""
        for idx, passages in r.listed.items():
            r.messages[idx]["content"] = prompts.candidates_turn(self._rendered(r, passages))
        for idx, passages in r.shown.items():
            rendered = self._rendered(r, passages)
            if r.rag and idx == 1:  # the baselines' first turn: passages and question
                turn = prompts.follow_up_turn if r.follow_up else prompts.rag_turn
                r.messages[idx]["content"] = turn(r.question.question, rendered)
            else:
                r.messages[idx]["content"] = prompts.documents_turn(rendered)

    @staticmethod
    def _rendered(r: _Rollout, passages: list[Passage]) -> list[str]:
        """`passages` numbered from 1 at `r`'s passage length, or a note that they were dropped."""
        if r.passage_words < _MIN_PASSAGE_WORDS:
            return ["(passages omitted to fit the context budget)"]
        return [format_passage(p, i, max_words=r.passage_words) for i, p in enumerate(passages, 1)]

    def _fit_prompt(self, r: _Rollout) -> str | None:
        """The prompt for `r`'s next turn within the context budget, shortening passages first.

        Passages are cut, never the question; returns None when even no passages do not fit.
        """
        acting = r.phase in _ACTING
        max_new = self.cfg.max_new_tokens if acting else self.cfg.answer_max_new_tokens
        budget = self.cfg.max_context_tokens - max_new
        while True:
            text = self.gen.chat_prompt(r.messages) + r.prefill()
            r.prompt_tokens = self.gen.count_tokens([text])[0]
            if r.prompt_tokens <= budget:
                return text
            if not (r.shown or r.listed) or r.passage_words < _MIN_PASSAGE_WORDS:
                return None
            r.passage_words //= 2
            self._render_documents(r)

    # ---------------------------------------------------------------- output
    def _record(self, r: _Rollout, method: Method, decoding: Decoding) -> Trajectory:
        return Trajectory.of_question(
            r.question,
            sample=r.sample,
            seed=decoding.seed,
            temperature=decoding.temperature,
            method=method,
            messages=r.messages,
            steps=r.steps,
            prediction=r.prediction,
            finish_reason=r.finish_reason,
            tokens=TokenCounts(generated=r.tokens_generated, last_prompt=r.prompt_tokens),
            logprob=r.logprob,
        )


ORACLE_QUERY = "(the gold supporting paragraphs)"


def gold_passages(q: Question) -> list[Passage]:
    """The question's gold supporting paragraphs as passages, in hop order, without repeats.

    Their ids are the corpus's (`passage_id`), so a gold paragraph is the corpus passage.
    """
    found: dict[str, Passage] = {}
    for hop in q.extra.get("support") or []:
        pid = passage_id(hop["title"], hop["paragraph"])
        found.setdefault(pid, Passage(pid, hop["title"], hop["paragraph"]))
    return list(found.values())


def _ending_start(text: str) -> int:
    """Where a turn that ends the search starts ending it.

    That is its first `<finish>`, `<answer>` or unfinished `<search>`: a forced search is
    written after what comes before.
    """
    found = [i for tag in _ENDING_TAGS if (i := text.find(tag)) >= 0]
    return min(found, default=len(text))


_ENDING_TAGS = (prompts.FINISH, prompts.ANSWER_OPEN, prompts.SEARCH_OPEN)


def _same_query(a: str, b: str) -> bool:
    return normalize_answer(a) == normalize_answer(b)
