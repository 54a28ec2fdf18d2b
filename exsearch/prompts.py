"""Action tags, prompt wording and the parser for the think → search → record agent, in one place.

A trajectory is a chat. Assistant turns hold the model's actions; the environment answers a
search with a user turn holding the passages, and asks for the final answer in a last user turn:

    system     task description
    user       the question
    assistant  <think>…</think><search>sub-query</search>
    user       <documents>[1] Title: … Content: …</documents>
    assistant  <record>evidence</record><think>…</think><search>next query</search>
    user       <documents>…</documents>
    assistant  <record>evidence</record><finish>
    user       request for the final answer
    assistant  <answer>short answer</answer>

As in the authors' released code, the record of step i and the query of step i+1 share one
assistant turn, and the final answer has a turn of its own. Generation stops at `</search>` and
`<finish>` (control passes to the environment) and at `</answer>`.

With document selection on (`agent.select_from > 0`, ExSearch-Zoo), a search is answered with a
numbered candidate list first, the model picks and orders the useful ones, and only those are
then shown as the usual documents turn:

    assistant  <think>…</think><search>sub-query</search>
    user       <candidates>[1] Title: … Content: …</candidates>
    assistant  <select>[2] > [1] > [5]</select>
    user       <documents>[1] (candidate 2) … [2] (candidate 1) … [3] (candidate 5) …</documents>
    assistant  <record>evidence</record>…

Generation then also stops at `</select>`; without selection nothing here changes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from exsearch.schema import Step, Trajectory

log = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
DOCS_OPEN, DOCS_CLOSE = "<documents>", "</documents>"
RECORD_OPEN, RECORD_CLOSE = "<record>", "</record>"
FINISH = "<finish>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
CANDIDATES_OPEN, CANDIDATES_CLOSE = "<candidates>", "</candidates>"
SELECT_OPEN, SELECT_CLOSE = "<select>", "</select>"
SELECT_SEPARATOR = " > "

# Strings at which generation hands control back to the environment.
ACTION_STOPS = [SEARCH_CLOSE, FINISH]
ANSWER_STOPS = [ANSWER_CLOSE]
# Only where selection is on: in ACTION_STOPS it would change what a default run generates.
SELECT_STOPS = [SELECT_CLOSE]

SYSTEM_PROMPT = f"""You answer questions by searching a Wikipedia passage collection step by step.
In each turn:
1. If passages were just shown, write the facts they give for your last query inside \
{RECORD_OPEN}{RECORD_CLOSE} (a short fact, or "nothing relevant").
2. Think about what you still need inside {THINK_OPEN}{THINK_CLOSE}.
3. Either search for one missing fact with {SEARCH_OPEN}a short query{SEARCH_CLOSE}, \
or write {FINISH} once your records are enough to answer.
After {FINISH} you will be asked for the final answer: give it inside \
{ANSWER_OPEN}{ANSWER_CLOSE}, as a few words, with no explanation."""

_TASK_LINE, _TURN_RULES = SYSTEM_PROMPT.split("\n", 1)
# SYSTEM_PROMPT with the selection action explained; `{top_k}` is filled by
# `select_system_prompt`.
SELECT_SYSTEM_PROMPT = f"""{_TASK_LINE}
After each search you first see numbered candidate passages inside \
{CANDIDATES_OPEN}{CANDIDATES_CLOSE}: pick the ones useful for your query, most useful first, \
at most {{top_k}}, as {SELECT_OPEN}[2] > [1]{SELECT_CLOSE}. Only those passages are then \
shown to you.
{_TURN_RULES}"""

DIRECT_SYSTEM_PROMPT = f"""You answer questions from your own knowledge. Give only the answer, \
as a few words, inside {ANSWER_OPEN}{ANSWER_CLOSE}."""

RAG_SYSTEM_PROMPT = f"""You answer questions using the passages you are given. Give only the \
answer, as a few words, inside {ANSWER_OPEN}{ANSWER_CLOSE}."""

ITER_RAG_SYSTEM_PROMPT = f"""You answer questions using the passages you are given. First \
write one search query for a fact the passages do not give yet, inside \
{SEARCH_OPEN}{SEARCH_CLOSE}; you will get more passages, then be asked for the answer: give only \
the answer, as a few words, inside {ANSWER_OPEN}{ANSWER_CLOSE}."""

FOLLOW_UP_REQUEST = f"Write one search query for what these passages do not say yet, inside \
{SEARCH_OPEN}{SEARCH_CLOSE}."

ANSWER_REQUEST = (
    f"Search finished. Using your records, give the final answer to the question "
    f'"{{question}}" inside {ANSWER_OPEN}{ANSWER_CLOSE}: only the answer, a few words.'
)
REPEATED_QUERY_NOTICE = (
    "You already searched for this. Search for something different, or write " + FINISH + "."
)


def question_turn(question: str) -> str:
    """The user's first turn."""
    return f"Question: {question}"


def _listing(open_tag: str, rendered_passages: list[str], close_tag: str) -> str:
    body = "\n".join(rendered_passages) if rendered_passages else "(no passages found)"
    return f"{open_tag}\n{body}\n{close_tag}"


def documents_turn(rendered_passages: list[str]) -> str:
    """The environment's reply to a search: numbered passages (1-based, as the model sees them)."""
    return _listing(DOCS_OPEN, rendered_passages, DOCS_CLOSE)


def select_system_prompt(top_k: int) -> str:
    """The agent's system prompt when it selects at most `top_k` passages after each search."""
    return SELECT_SYSTEM_PROMPT.format(top_k=top_k)


def candidates_turn(rendered_passages: list[str]) -> str:
    """The environment's reply to a search when the model selects: the numbered candidates."""
    return _listing(CANDIDATES_OPEN, rendered_passages, CANDIDATES_CLOSE)


def select_turn(numbers: Sequence[int]) -> str:
    """The assistant's selection: candidate numbers (1-based, as shown), most useful first."""
    return SELECT_OPEN + SELECT_SEPARATOR.join(f"[{n}]" for n in numbers) + SELECT_CLOSE


def answer_request(question: str) -> str:
    """The environment's last turn, asking for the short final answer."""
    return ANSWER_REQUEST.format(question=question)


def rag_turn(question: str, rendered_passages: list[str]) -> str:
    """The single user turn of the `rag` baseline: passages, then the question."""
    return f"{documents_turn(rendered_passages)}\n{question_turn(question)}\n" + answer_request(
        question
    )


def follow_up_turn(question: str, rendered_passages: list[str]) -> str:
    """The first user turn of the `iter_rag` baseline: passages, the question, a query asked for."""
    return f"{documents_turn(rendered_passages)}\n{question_turn(question)}\n{FOLLOW_UP_REQUEST}"


def records_chat(question: str, records: Sequence[str], answer: str) -> list[dict[str, str]]:
    """The question and a trajectory's records, read as `rag` reads passages, then `answer`.

    What `sample.score: records` scores the gold answer after: the evidence the trajectory kept,
    without its queries, thoughts or the passages it was shown.
    """
    listed = [f"[{i}] {r}" for i, r in enumerate(records, 1)] or ["(nothing recorded)"]
    return [
        {"role": "system", "content": RAG_SYSTEM_PROMPT},
        {"role": "user", "content": rag_turn(question, listed)},
        {"role": "assistant", "content": answer_turn(answer)},
    ]


def answer_turn(answer: str) -> str:
    """The assistant's final turn holding `answer`."""
    return f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def action_turn(
    *, record: str | None = None, think: str | None = None, query: str | None = None
) -> str:
    """Render an assistant action turn; `query=None` means the search is finished."""
    parts = []
    if record is not None:
        parts.append(f"{RECORD_OPEN}{record}{RECORD_CLOSE}")
    if think is not None:
        parts.append(f"{THINK_OPEN}{think}{THINK_CLOSE}")
    parts.append(f"{SEARCH_OPEN}{query}{SEARCH_CLOSE}" if query is not None else FINISH)
    return "".join(parts)


@dataclass
class Turn:
    """What one assistant turn said; fields are None when the tag is absent."""

    record: str | None = None
    think: str | None = None
    query: str | None = None
    finish: bool = False
    answer: str | None = None

    @property
    def is_action(self) -> bool:
        """Whether the turn hands control to the environment (a search, a finish or an answer)."""
        return self.query is not None or self.finish or self.answer is not None


def _between(text: str, open_tag: str, close_tag: str) -> str | None:
    m = re.search(re.escape(open_tag) + r"(.*?)" + re.escape(close_tag), text, re.DOTALL)
    return m.group(1).strip() if m else None


def parse_turn(text: str) -> Turn:
    """Parse assistant text; unclosed tags count as absent, so a runaway turn is never an action.

    An unclosed `<answer>` is the exception: the answer is the text after it up to the first line
    break, because the answer turn is often cut by the token limit.
    """
    turn = Turn(
        record=_between(text, RECORD_OPEN, RECORD_CLOSE),
        think=_between(text, THINK_OPEN, THINK_CLOSE),
        query=_between(text, SEARCH_OPEN, SEARCH_CLOSE),
        finish=FINISH in text,
        answer=_between(text, ANSWER_OPEN, ANSWER_CLOSE),
    )
    if turn.answer is None and ANSWER_OPEN in text:
        tail = text.split(ANSWER_OPEN, 1)[1].strip()
        turn.answer = tail.splitlines()[0].strip() if tail else ""
    # A query and a finish in one turn: the earlier one is what the model did.
    if turn.query is not None and turn.finish:
        if text.index(FINISH) < text.index(SEARCH_OPEN):
            turn.query = None
        else:
            turn.finish = False
    return turn


def parse_steps(messages: list[dict]) -> tuple[list[Step], str | None]:
    """Turn a whole chat back into its search steps and final answer (None if absent).

    Passage ids are not in the chat; the agent's records carry them next to the steps.
    """
    steps: list[Step] = []
    answer = None
    for msg in messages:
        if msg["role"] == "assistant":
            turn = parse_turn(msg["content"])
            if turn.record is not None and steps and steps[-1].record is None:
                steps[-1] = replace(steps[-1], record=turn.record)
            if turn.query is not None:
                steps.append(Step(query=turn.query, think=turn.think))
            if turn.answer is not None:
                answer = turn.answer
    return steps, answer


# --- the gold answer: what the E-step scores and the M-step trains -----------------------


def with_gold_answer(messages: Sequence[dict[str, str]], gold: str) -> list[dict[str, str]]:
    """Return a copy of the chat whose final assistant turn answers `gold` (whitespace-stripped)."""
    if not messages or messages[-1].get("role") != "assistant":
        last = messages[-1].get("role") if messages else "nothing"
        raise ValueError(f"the chat must end with the assistant's answer turn, it ends with {last}")
    return [dict(m) for m in messages[:-1]] + [
        {"role": "assistant", "content": answer_turn(gold.strip())}
    ]


def trajectory_id(traj: Trajectory) -> str:
    """How errors name a trajectory: its question id and sample number."""
    return f"qid={traj.qid!r} sample={traj.sample!r}"


def gold_answer_tokens(tokenizer: Any, trajectory: Trajectory) -> tuple[list[int], list[int]]:
    """Token ids of the chat with the gold answer, and the positions of the gold answer's tokens.

    The whole chat is rendered and tokenised once, as training will see it, and the ids are cut
    after the last answer token. Answer tokens are those whose characters overlap the gold string
    inside the final `<answer>…</answer>`. An empty gold answer gives no positions.
    """
    try:
        gold = trajectory.answers[0].strip()
        messages = with_gold_answer(trajectory.messages, gold)
    except (IndexError, TypeError, ValueError) as e:
        raise ValueError(f"trajectory {trajectory_id(trajectory)}: {e}") from e
    prefix = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    start = full.find(ANSWER_OPEN + gold, len(prefix)) if full.startswith(prefix) else -1
    if start < 0:
        raise ValueError(
            f"trajectory {trajectory_id(trajectory)}: the chat template does not render the "
            "answer turn after the generation prompt; cannot locate the gold answer"
        )
    a = start + len(ANSWER_OPEN)
    b = a + len(gold)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    positions = [j for j, (s, e) in enumerate(enc["offset_mapping"]) if s < b and e > a]
    if not positions:
        return enc["input_ids"], []
    return enc["input_ids"][: positions[-1] + 1], positions


def encode_gold_answers(
    tokenizer: Any, trajectories: Sequence[Trajectory]
) -> list[tuple[list[int], list[int]]]:
    """`gold_answer_tokens` of each trajectory, warning once for each empty gold answer.

    Both scoring backends start here: a trajectory with no answer tokens cannot be scored
    (its score is NaN and it gets no weight), and the user should hear which one it was.
    """
    encoded = [gold_answer_tokens(tokenizer, t) for t in trajectories]
    for traj, (_, positions) in zip(trajectories, encoded, strict=True):
        if not positions:
            log.warning("trajectory %s has an empty gold answer; score is NaN", trajectory_id(traj))
    return encoded
