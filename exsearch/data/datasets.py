"""Raw question datasets: every supported file format becomes `Question`s with gold support.

Formats (`DatasetFile.format`): native HotpotQA and 2WikiMultiHopQA (distractor JSON), IRCoT's
processed JSONL, native MuSiQue, and FlashRAG/Search-R1 JSONL. A file may be a JSON list or
JSONL (`exsearch.data.source_records`).

Every question carries `extra["support"]`, its gold evidence in hop order, from which warm-up
builds trajectories: a list of `{title, paragraph, sentences, sub_question, sub_answer}`.
Texts are normalised (`normalise_text`), so `(title, paragraph)` is exactly the `(title, text)`
of a corpus passage. `sentences` are the supporting sentences where the source marks them
(HotpotQA, 2Wiki); otherwise the paragraph's sentences, narrowed for MuSiQue to those that
contain the hop's answer. `supporting_titles` lists the support titles without repeats.

A row without question text or answer is invalid, whatever else it has; so a MuSiQue row marked
`answerable: false` is kept when it has an answer (with `extra["answerable"] = False`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from exsearch.config import DatasetFile
from exsearch.data.corpus import Context, join_sentences, normalise_text, split_sentences
from exsearch.data.source_records import InvalidRecord, id_note, read_records, require
from exsearch.schema import Question


@dataclass
class QuestionSet:
    """What one question file yields."""

    questions: list[Question]
    contexts: list[Context]  # every context paragraph of the kept questions, repeats included
    skipped: list[str] = field(default_factory=list)  # one "where: why" line per skipped row


def read_dataset(spec: DatasetFile, *, skip_invalid: bool = False) -> QuestionSet:
    """Read one question file in `spec.format`: skip `spec.skip` valid questions, keep `spec.limit`.

    Only the kept questions' contexts are returned.

    Raises:
        ValueError: a row has no question or answer, is malformed or not JSON, or repeats an id,
            naming the file and line (JSONL) or record index and id (JSON list). With
            `skip_invalid` such rows are skipped and listed in `QuestionSet.skipped` instead;
            a JSON list that does not parse at all still raises.
    """
    parse = DATASET_READERS[spec.format]
    out = QuestionSet([], [])
    seen: set[str] = set()
    to_skip = spec.skip
    for n, (where, rec) in enumerate(read_records(spec.path), 1):
        try:
            if isinstance(rec, InvalidRecord):
                raise rec
            if not isinstance(rec, dict):
                raise InvalidRecord(f"expected a JSON object, got {type(rec).__name__}")
            try:
                question, contexts = parse(rec, spec.dataset, str(n))
            except InvalidRecord:
                raise
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
                why = f"malformed {spec.format} record ({type(e).__name__}: {e})"
                raise InvalidRecord(why) from None
            if question.id in seen:
                raise InvalidRecord(f"question id {question.id!r} appears twice in this file")
        except InvalidRecord as e:
            msg = f"{where}{id_note(rec)}: {e}"
            if not skip_invalid:
                raise ValueError(
                    f"{msg} (set prepare.skip_invalid: true to skip such rows)"
                ) from None
            out.skipped.append(msg)
            continue
        seen.add(question.id)
        if to_skip:
            to_skip -= 1
            continue
        out.questions.append(question)
        out.contexts.extend(contexts)
        if spec.limit is not None and len(out.questions) >= spec.limit:
            break
    return out


# --- record-level parsers: (record, dataset, fallback id) -> (Question, contexts) -------------


def _hotpot_like(rec: dict, dataset: str, _: str) -> tuple[Question, list[Context]]:
    """HotpotQA / 2WikiMultiHopQA: context [[title, sentences]], supporting_facts [[title, i]]."""
    context, facts = (
        require(rec, "context", (list, dict)),
        require(rec, "supporting_facts", (list, dict)),
    )
    if isinstance(context, dict):  # the Hugging Face `datasets` layout of the same data
        context = list(zip(context["title"], context["sentences"], strict=True))
        facts = list(zip(facts["title"], facts["sent_id"], strict=True))
    paragraphs: dict[str, list[str]] = {}
    for title, sentences in context:
        sentences = _strings(sentences, f"context paragraph {title!r}")
        paragraphs.setdefault(
            _string(title, "a context title"), [s for s in sentences if s.strip()]
        )
    wanted: dict[str, list[int]] = {}  # title -> sentence indices, titles in supporting_facts order
    for title, i in facts:
        if not isinstance(i, int) or isinstance(i, bool):
            raise InvalidRecord(f"supporting fact {title!r}: sentence index {i!r} is not a number")
        if title not in paragraphs:
            raise InvalidRecord(f"supporting fact title {title!r} is not among the context titles")
        wanted.setdefault(title, []).append(i)
    support = []
    for title, idx in wanted.items():
        sents = paragraphs[title]
        # A few HotpotQA facts point past the paragraph's end; fall back to the whole paragraph.
        picked = [sents[i].strip() for i in sorted(set(idx)) if 0 <= i < len(sents)]
        support.append(_hop(title, join_sentences(sents), picked or [s.strip() for s in sents]))
    extra = {k: rec[k] for k in ("type", "level", "evidences") if rec.get(k)}
    question = _question(
        _id(rec, "_id", "id"), rec, "question", [rec.get("answer"), *_aliases(rec)]
    )
    return _with_support(question, dataset, support, extra), [
        (t, join_sentences(s)) for t, s in paragraphs.items()
    ]


def _ircot(rec: dict, dataset: str, _: str) -> tuple[Question, list[Context]]:
    """IRCoT processed: answers_objects [{spans, number, date}], contexts [{title, ...}]."""
    answers: list[Any] = []
    for obj in require(rec, "answers_objects", list):
        date = " ".join(str(v) for v in (obj.get("date") or {}).values() if v)
        answers += obj.get("spans") or [obj.get("number") or date]
    question = _question(_id(rec, "question_id"), rec, "question_text", answers)
    contexts = [
        (require(c, "title", str), require(c, "paragraph_text", str))
        for c in rec.get("contexts") or []
    ]
    gold = [
        (c["title"], c["paragraph_text"])
        for c in rec.get("contexts") or []
        if c.get("is_supporting")
    ]
    # No hop order in this format: the paragraph that states the answer is the last hop.
    gold.sort(key=lambda tp: any(_mentions(tp[1], a) for a in question.answers))
    support = [_hop(t, p, split_sentences(p)) for t, p in gold]
    return _with_support(question, dataset, support, {}), contexts


def _musique(rec: dict, dataset: str, _: str) -> tuple[Question, list[Context]]:
    """MuSiQue: paragraphs [{idx, title, paragraph_text, is_supporting}], question_decomposition."""
    paragraphs = require(rec, "paragraphs", list)
    for para in paragraphs:
        require(para, "title", str)
        require(para, "paragraph_text", str)
    by_idx = {p.get("idx", i): p for i, p in enumerate(paragraphs)}
    qid = _id(rec, "id")
    question = _question(qid, rec, "question", [rec.get("answer"), *_aliases(rec)])
    support, sub_answers = [], []
    for step in rec.get("question_decomposition") or []:
        sub_q = re.sub(
            r"#(\d+)",
            lambda m: sub_answers[int(m[1]) - 1] if 0 < int(m[1]) <= len(sub_answers) else m[0],
            step["question"],
        )
        sub_a = step.get("answer")
        sub_answers.append(sub_a or "")
        para = by_idx.get(step.get("paragraph_support_idx"))
        if para is None:  # unanswerable variants drop a supporting paragraph
            continue
        text = para["paragraph_text"]
        sents = split_sentences(text)
        picked = [s for s in sents if sub_a and _mentions(s, sub_a)] or sents
        support.append(_hop(para["title"], text, picked, sub_q, sub_a))
    if not rec.get("question_decomposition"):
        support = [
            _hop(p["title"], p["paragraph_text"], split_sentences(p["paragraph_text"]))
            for p in paragraphs
            if p.get("is_supporting")
        ]
    extra: dict[str, Any] = {"answerable": rec.get("answerable", True)}
    if "__" in qid:
        extra["type"] = qid.split("__")[0]  # 2hop, 3hop1, 4hop3, ...
    contexts = [(p["title"], p["paragraph_text"]) for p in paragraphs]
    return _with_support(question, dataset, support, extra), contexts


def _flashrag(rec: dict, dataset: str, fallback_id: str) -> tuple[Question, list[Context]]:
    """FlashRAG/Search-R1 `{id, question, golden_answers}`; also `idx`/`answer` (R1-Searcher)."""
    answers = next((rec[k] for k in ("golden_answers", "answers", "answer") if k in rec), None)
    answers = answers if isinstance(answers, list) else [answers]
    qid = _id(rec, "id", "_id", "idx", "question_id", default=f"{dataset}-{fallback_id}")
    return _with_support(_question(qid, rec, "question", answers), dataset, [], {}), []


# `DatasetFile.format` → the parser of one record; exsearch.config.data lists the same names
# (tests/test_registries.py checks it).
DATASET_READERS: dict[str, Callable[[dict, str, str], tuple[Question, list[Context]]]] = {
    "hotpotqa": _hotpot_like,
    "2wiki": _hotpot_like,
    "ircot": _ircot,
    "musique": _musique,
    "flashrag": _flashrag,
}


# --- helpers ---------------------------------------------------------------------------------


def _id(rec: dict, *keys: str, default: str | None = None) -> str:
    for k in keys:
        if rec.get(k) not in (None, ""):
            return str(rec[k])
    if default is None:
        raise InvalidRecord(f"missing id (looked for {', '.join(map(repr, keys))})")
    return default


def _question(qid: str, rec: dict, key: str, answers: Iterable[Any]) -> Question:
    text = rec.get(key)
    if not isinstance(text, str) or not text.strip():
        raise InvalidRecord(f"no question text (key {key!r})")
    clean: list[str] = []
    for a in answers:
        if isinstance(a, list | dict | tuple):  # str() would make "['x']" an answer
            raise InvalidRecord(f"answer {a!r} is a {type(a).__name__}, not a string or number")
        a = "" if a is None or isinstance(a, bool) else str(a).strip()
        if a and a not in clean:
            clean.append(a)
    if not clean:
        raise InvalidRecord("no answer")
    return Question(id=qid, question=text.strip(), answers=clean, dataset="")


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidRecord(f"{what} must be a string, got {_shown(value)}")
    return value


def _strings(value: Any, what: str) -> list[str]:
    """`value` if it is a list of strings; a string here would be read character by character."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRecord(f"{what} must be a list of strings, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def _aliases(rec: dict) -> list[Any]:
    """`answer_aliases`, a list (absent or null: none)."""
    aliases = rec.get("answer_aliases") or []
    if not isinstance(aliases, list):
        raise InvalidRecord(f"answer_aliases must be a list, got {_shown(aliases)}")
    return aliases


def _hop(
    title: str,
    paragraph: str,
    sentences: list[str],
    sub_q: str | None = None,
    sub_a: str | None = None,
) -> dict[str, Any]:
    """One hop of gold evidence; text normalised so (title, paragraph) equals a corpus passage."""
    return {
        "title": normalise_text(title),
        "paragraph": normalise_text(paragraph),
        "sentences": [normalise_text(s) for s in sentences],
        "sub_question": sub_q,
        "sub_answer": sub_a,
    }


def _with_support(q: Question, dataset: str, support: list[dict], extra: dict) -> Question:
    titles = list(dict.fromkeys(h["title"] for h in support))
    return Question(
        id=q.id,
        question=q.question,
        answers=q.answers,
        dataset=dataset,
        supporting_titles=titles,
        extra={**extra, "support": support},
    )


def _mentions(text: str, answer: str) -> bool:
    """Whole-word, case-insensitive containment (so 'no' does not match 'north')."""
    return re.search(rf"(?<!\w){re.escape(answer.lower())}(?!\w)", text.lower()) is not None
