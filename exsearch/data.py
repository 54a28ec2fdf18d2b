r"""Dataset and corpus readers: every supported source format becomes `Question`s and `Passage`s.

Question formats (`DatasetFile.format`): native HotpotQA and 2WikiMultiHopQA (distractor
JSON), IRCoT's processed JSONL, native MuSiQue, and FlashRAG/Search-R1 JSONL. A question file may
be a JSON list or JSONL (one record per line): the first non-blank character decides. Corpus
formats (`CorpusFile.format`): FlashRAG `{id, contents: '"Title"\ntext'}` (e.g. its
`wiki18_100w.jsonl`), `title_text` (`{title, text}` records), `title_sentences` (one JSON
object, title → sentences) and `dpr_tsv` (DPR's `psgs_w100.tsv`: tab-separated, CSV-quoted,
header `id text title`). Corpus files are streamed, never read whole; `fetch_corpus_file`
downloads a missing one from its `url`.

Every question carries `extra["support"]`, its gold evidence in hop order, from which warm-up
builds trajectories: a list of `{title, paragraph, sentences, sub_question, sub_answer}`.
Texts are normalised (`normalise_text`), so `(title, paragraph)` is exactly the `(title, text)`
of a corpus passage. `sentences` are the supporting sentences where the source marks them
(HotpotQA, 2Wiki); otherwise the paragraph's sentences, narrowed for MuSiQue to those that
contain the hop's answer. `supporting_titles` lists the support titles without repeats.

A row without question text or answer is invalid, whatever else it has; so a MuSiQue row marked
`answerable: false` is kept when it has an answer (with `extra["answerable"] = False`).

Passage ids are content hashes of the normalised (title, text), so a passage keeps its id
whatever files, order or limits the corpus was built from.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import shutil
import unicodedata
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from exsearch.config_data import CorpusFile, DatasetFile
from exsearch.io import atomic_path, read_json, text_lines
from exsearch.schema import Passage, Question

Context = tuple[str, str]  # (title, paragraph text)


class InvalidRecord(ValueError):
    """One source record cannot become a question; the reader adds where it is."""


@dataclass
class QuestionSet:
    """What one question file yields."""

    questions: list[Question]
    contexts: list[Context]  # every context paragraph of the kept questions, repeats included
    skipped: list[str] = field(default_factory=list)  # one "where: why" line per skipped row


def read_questions(spec: DatasetFile, *, skip_invalid: bool = False) -> QuestionSet:
    """Read one question file in `spec.format`: skip `spec.skip` valid questions, keep `spec.limit`.

    Only the kept questions' contexts are returned.

    Raises:
        ValueError: a row has no question or answer, is malformed or not JSON, or repeats an id,
            naming the file and line (JSONL) or record index and id (JSON list). With
            `skip_invalid` such rows are skipped and listed in `QuestionSet.skipped` instead;
            a JSON list that does not parse at all still raises.
    """
    parse = _PARSERS[spec.format]
    out = QuestionSet([], [])
    seen: set[str] = set()
    to_skip = spec.skip
    for n, (where, rec) in enumerate(_records(spec.path), 1):
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
            msg = f"{where}{_id_note(rec)}: {e}"
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


def read_corpus(spec: CorpusFile) -> Iterator[Passage]:
    """Yield the passages of one corpus file (ids as in the file; `CorpusBuilder` re-ids them).

    Raises:
        ValueError: a record is not JSON or lacks its fields, naming the file and line/record.
    """
    if spec.format == "title_sentences":
        data = read_json(spec.path)
        if not isinstance(data, dict):
            raise ValueError(
                f"{spec.path}: title_sentences expects one JSON object title → sentences"
            )
        items: Iterable[tuple[str, Any]] = (
            (f"{spec.path}: title {t!r}", {"title": t, "text": join_sentences(s)})
            for t, s in data.items()
        )
    elif spec.format == "dpr_tsv":
        items = _tsv_records(spec.path)
    else:
        items = _records(spec.path)
    for n, (where, rec) in enumerate(items, 1):
        if spec.limit is not None and n > spec.limit:
            return
        try:
            if isinstance(rec, InvalidRecord):
                raise rec
            if spec.format == "flashrag":
                title, text = _split_contents(_field(rec, "contents", str))
            else:
                title, text = _field(rec, "title", str), _field(rec, "text", str)
        except (InvalidRecord, TypeError) as e:
            raise ValueError(f"{where}{_id_note(rec)}: {e}") from None
        pid = rec.get("id", n - 1) if isinstance(rec, dict) else n - 1
        yield Passage(id=str(pid), title=title.strip(), text=text.strip())


def fetch_corpus_file(spec: CorpusFile) -> Path:
    """Return `spec.path`, first downloading it from `spec.url` if the file is missing.

    The download streams to a temporary sibling that is renamed when complete, so an
    interrupted one leaves nothing behind; a URL ending in .gz is decompressed on the fly
    unless `spec.path` itself ends in .gz.

    Raises:
        OSError: the download failed (naming the URL and the path).
    """
    path = Path(spec.path)
    if path.exists() or spec.url is None:
        return path
    gunzip = spec.url.endswith(".gz") and path.suffix != ".gz"
    try:
        with (
            urllib.request.urlopen(spec.url, timeout=60) as response,  # noqa: S310
            atomic_path(path) as tmp,
            open(tmp, "wb") as out,
            tqdm.wrapattr(
                response, "read", total=_content_length(response), desc=f"download {path.name}"
            ) as src,
        ):
            shutil.copyfileobj(gzip.GzipFile(fileobj=src) if gunzip else src, out, 2**20)
    except (OSError, EOFError) as e:
        raise OSError(f"{path}: downloading {spec.url} failed ({type(e).__name__}: {e})") from e
    return path


def _content_length(response: Any) -> int | None:
    size = response.headers.get("Content-Length")
    return int(size) if size and size.isdigit() else None


def normalise_text(text: str) -> str:
    """Unicode NFC with runs of whitespace collapsed: what counts as 'the same text'."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def passage_key(title: str, text: str) -> tuple[str, str]:
    """Return the de-duplication key of a passage."""
    return normalise_text(title), normalise_text(text)


def passage_id(title: str, text: str) -> str:
    """Stable id: the first 16 hex digits of SHA-256 over the normalised title and text."""
    return _key_id(passage_key(title, text))


def _key_id(key: tuple[str, str]) -> str:
    return hashlib.sha256("\n".join(key).encode("utf-8")).hexdigest()[:16]


class CorpusBuilder:
    """Collects passages in first-seen order, dropping repeats by `passage_key` and empty texts.

    Passages go to `self.passages`, or to `sink` when one is given (e.g. a writer to
    corpus.jsonl). Repeats are recognised by passage id (64 bits of SHA-256 over the key), so
    the builder keeps a set entry of ~110 bytes per passage (peak, set resizing included), not
    its text: with a sink, DPR's 21M-passage Wikipedia is de-duplicated in ~2.3 GiB. Two
    different passages whose ids collide (odds about 1e-5 at 21M passages) would count as one.
    """

    def __init__(self, sink: Callable[[Passage], object] | None = None) -> None:
        self.passages: list[Passage] = []
        self._sink = sink or self.passages.append
        self._seen: set[int] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, title_text: Context) -> bool:
        return int(passage_id(*title_text), 16) in self._seen

    def add_all(self, items: Iterable[Passage | Context]) -> tuple[int, int]:
        """Add (title, text) pairs or passages; return (added, dropped as repeats or empty)."""
        added = dropped = 0
        for item in items:
            title, text = (item.title, item.text) if isinstance(item, Passage) else item
            key = passage_key(title, text)
            pid = _key_id(key)
            if not key[1] or int(pid, 16) in self._seen:
                dropped += 1
                continue
            self._seen.add(int(pid, 16))
            self._sink(Passage(id=pid, title=key[0], text=key[1]))
            added += 1
        return added, dropped


def join_sentences(sentences: Iterable[str]) -> str:
    """Rebuild a paragraph; HotpotQA sentences carry their leading space, 2Wiki's do not."""
    text = ""
    for s in sentences:
        text += s if not text or text[-1].isspace() or s[:1].isspace() else " " + s
    return text.strip()


_END = re.compile(r"[.!?][\"')\]]*(\s+)(?=[\"'(\[]?[A-Z0-9])")
_ABBREV = re.compile(
    r"(?:.*\W)?(?:(?:[A-Za-z]\.)+|(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Mt|Ft|No|vs|Gen|Col|Lt|Sgt|Capt|Rev"
    r"|Prof|Inc|Ltd|Co|Bros|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.)"
)


def split_sentences(text: str) -> list[str]:
    """Split on end punctuation followed by a capital or digit, sparing initials and titles.

    A heuristic (no model): good enough to pick the sentence that carries a hop's answer.
    """
    out, start = [], 0
    for m in _END.finditer(text):
        if text[m.start()] == "." and _ABBREV.fullmatch(
            text[max(start, m.start() - 12) : m.start() + 1]
        ):
            continue
        out.append(text[start : m.start(1)].strip())
        start = m.end(1)
    out.append(text[start:].strip())
    return [s for s in out if s]


# --- record-level parsers: (record, dataset, fallback id) -> (Question, contexts) -------------


def _hotpot_like(rec: dict, dataset: str, _: str) -> tuple[Question, list[Context]]:
    """HotpotQA / 2WikiMultiHopQA: context [[title, sentences]], supporting_facts [[title, i]]."""
    context, facts = (
        _field(rec, "context", (list, dict)),
        _field(rec, "supporting_facts", (list, dict)),
    )
    if isinstance(context, dict):  # the Hugging Face `datasets` layout of the same data
        context = list(zip(context["title"], context["sentences"], strict=True))
        facts = list(zip(facts["title"], facts["sent_id"], strict=True))
    paragraphs: dict[str, list[str]] = {}
    for title, sentences in context:
        paragraphs.setdefault(title, [s for s in sentences if s.strip()])
    wanted: dict[str, list[int]] = {}  # title -> sentence indices, titles in supporting_facts order
    for title, i in facts:
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
        _id(rec, "_id", "id"), rec, "question", [rec.get("answer"), *rec.get("answer_aliases", [])]
    )
    return _with_support(question, dataset, support, extra), [
        (t, join_sentences(s)) for t, s in paragraphs.items()
    ]


def _ircot(rec: dict, dataset: str, _: str) -> tuple[Question, list[Context]]:
    """IRCoT processed: answers_objects [{spans, number, date}], contexts [{title, ...}]."""
    answers: list[Any] = []
    for obj in _field(rec, "answers_objects", list):
        date = " ".join(str(v) for v in (obj.get("date") or {}).values() if v)
        answers += obj.get("spans") or [obj.get("number") or date]
    question = _question(_id(rec, "question_id"), rec, "question_text", answers)
    contexts = [(c["title"], c["paragraph_text"]) for c in rec.get("contexts") or []]
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
    paragraphs = _field(rec, "paragraphs", list)
    by_idx = {p.get("idx", i): p for i, p in enumerate(paragraphs)}
    qid = _id(rec, "id")
    question = _question(qid, rec, "question", [rec.get("answer"), *rec.get("answer_aliases", [])])
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


_PARSERS: dict[str, Callable[[dict, str, str], tuple[Question, list[Context]]]] = {
    "hotpotqa": _hotpot_like,
    "2wiki": _hotpot_like,
    "ircot": _ircot,
    "musique": _musique,
    "flashrag": _flashrag,
}


# --- helpers ---------------------------------------------------------------------------------


def _records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, record) from a JSON list or a JSONL file; a bad JSONL line yields an error.

    Raises:
        ValueError: a JSON list (first character '[') that does not parse, naming file and line.
    """
    with open(path, "rb") as f:
        while (first := f.read(1)) and first.isspace():
            pass
    if first == b"[":
        for i, rec in enumerate(read_json(path)):
            yield f"{path}: record {i}", rec
        return
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"{path}:{lineno}", InvalidRecord(f"not valid JSON ({e.msg})")


DPR_COLUMNS = ("id", "text", "title")


def _tsv_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, {id, text, title}) from a DPR-style TSV with a header row.

    Raises:
        ValueError: the header lacks one of the columns id, text, title.
    """
    csv.field_size_limit(2**31 - 1)  # a passage is one field; the default limit is 128 KiB
    lines = (line for _, line in text_lines(path))  # a line that is not UTF-8 names itself
    reader = csv.reader(lines, delimiter="\t")
    header = [h.strip().lower() for h in next(reader, [])]
    if missing := [c for c in DPR_COLUMNS if c not in header]:
        raise ValueError(
            f"{path}:1: dpr_tsv needs a header row with columns {', '.join(DPR_COLUMNS)}; "
            f"missing {', '.join(missing)} (header: {header})"
        )
    cols = [header.index(c) for c in DPR_COLUMNS]
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if len(row) != len(header):
            yield where, InvalidRecord(f"{len(row)} columns, the header has {len(header)}")
        else:
            yield where, dict(zip(DPR_COLUMNS, (row[i] for i in cols), strict=True))


def _id_note(rec: Any) -> str:
    if isinstance(rec, dict):
        for k in ("_id", "id", "question_id", "idx"):
            if rec.get(k) is not None:
                return f" (id {rec[k]!r})"
    return ""


def _field(rec: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(rec, dict) or key not in rec:
        raise InvalidRecord(f"missing key {key!r}")
    if not isinstance(rec[key], kind):
        raise InvalidRecord(f"key {key!r} has the wrong type ({type(rec[key]).__name__})")
    return rec[key]


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
        a = "" if a is None or isinstance(a, bool) else str(a).strip()
        if a and a not in clean:
            clean.append(a)
    if not clean:
        raise InvalidRecord("no answer")
    return Question(id=qid, question=text.strip(), answers=clean, dataset="")


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


def _split_contents(contents: str) -> Context:
    r"""FlashRAG `contents` is '"Title"\ntext'; the quotes are sometimes missing."""
    title, sep, text = contents.partition("\n")
    if not sep:
        return "", contents
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text
