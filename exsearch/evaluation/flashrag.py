r"""One method's predictions in FlashRAG's dataset schema, for its evaluator and its baselines.

    exsearch export --format flashrag --predictions runs/iter_2/predictions.jsonl \
        --corpus data/prepared/corpus.jsonl --out reports/iter_2.flashrag.jsonl

FlashRAG (github.com/RUC-NLPIR/FlashRAG, `flashrag/dataset/dataset.py`) keeps a sample as an
`Item` whose `to_dict` gives `id`, `question`, `golden_answers`, `output` (what the pipeline
produced: `pred`, `retrieval_result`, `prompt`, …) and `metadata` when it has any. Its
`Dataset` loads items from JSONL, one a line; `Dataset.save` writes them as one JSON list. So
`.jsonl` output is what FlashRAG reads back and `.json` output is what it writes.

`retrieval_result` is one list per question, as FlashRAG's retrievers return it: here every
passage shown to the model over all searches, first seen first, each once. With the corpus
each passage is `{"id", "contents"}`, `contents` being FlashRAG's "title\ntext" (its prompt
template splits the title off at the first newline); without it, `{"id"}` only, and FlashRAG's
retrieval metrics, which read `contents`, cannot score them. `prompt` is the whole chat
(FlashRAG keeps a chat model's prompt as its role/content messages), the model's turns
included, since an agent's answer comes from many prompts, not one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exsearch.data import read_trajectories
from exsearch.files import read_jsonl, write_json, write_jsonl
from exsearch.schema import Passage, Trajectory

SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class FlashragItem:
    """One question as a FlashRAG `Item`: its fields, named and ordered as `Item.to_dict`."""

    id: str
    question: str
    golden_answers: list[str]
    output: dict[str, Any]
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        d = {
            "id": self.id,
            "question": self.question,
            "golden_answers": list(self.golden_answers),
            "output": self.output,
        }
        if self.metadata:  # as FlashRAG: no key for empty metadata
            d["metadata"] = self.metadata
        return d


def retrieved_ids(record: Trajectory) -> list[str]:
    """Every passage id shown to the model over all searches, first seen first, each once.

    FlashRAG's `retrieval_result` is one list per question, not one per search.
    """
    return list(dict.fromkeys(pid for step in record.steps for pid in step.passage_ids))


def flashrag_contents(passage: Passage) -> str:
    r"""FlashRAG's `contents`: "title\ntext" ("\ntext" without a title, as its docs advise)."""
    return f"{passage.title}\n{passage.text}"


def to_flashrag(record: Trajectory, passages: Mapping[str, Passage] | None = None) -> FlashragItem:
    """The FlashRAG item of one evaluated trajectory; `passages` gives the retrieved texts.

    Raises:
        KeyError: `passages` is given but lacks a retrieved id.
    """
    ids = retrieved_ids(record)
    if passages is None:
        retrieval: list[dict[str, str]] = [{"id": pid} for pid in ids]
    else:
        retrieval = [{"id": pid, "contents": flashrag_contents(passages[pid])} for pid in ids]
    metadata: dict[str, Any] = {
        "dataset": record.dataset,
        "method": record.method,
        "finish_reason": record.finish_reason,
        "searches": [step.query for step in record.steps],
    }
    if record.supporting_titles:
        metadata["supporting_titles"] = list(record.supporting_titles)
    return FlashragItem(
        id=record.qid,
        question=record.question,
        golden_answers=list(record.answers),
        output={
            "pred": record.prediction,
            "retrieval_result": retrieval,
            "prompt": [dict(m) for m in record.messages],
        },
        metadata=metadata,
    )


def select_method(records: Sequence[Trajectory], method: str, where: str) -> list[Trajectory]:
    """The records of `method`, in file order.

    Raises:
        ValueError: no record is of `method`; the message lists the methods `where` holds.
    """
    chosen = [r for r in records if r.method == method]
    if not chosen:
        present = sorted({str(r.method) for r in records})
        raise ValueError(
            f"{where}: no {method!r} records; the file holds "
            f"{', '.join(present) or 'no records'}: pick one with --method"
        )
    return chosen


def read_passages(path: str | os.PathLike, wanted: Iterable[str]) -> dict[str, Passage]:
    """The passages of a prepared corpus (`Passage` records, one a line) whose ids are wanted.

    Streams the file and keeps only the wanted passages, so a corpus of millions fits.

    Raises:
        ValueError: a wanted id is not in the corpus (another corpus than the run's), naming it.
    """
    wanted = set(wanted)
    found: dict[str, Passage] = {}
    for lineno, row in enumerate(read_jsonl(path), 1):
        pid = str(row.get("id")) if isinstance(row, dict) else None
        if pid in wanted:
            try:
                found[pid] = Passage.from_dict(row)
            except (KeyError, TypeError) as e:
                raise ValueError(
                    f"{path}: record {lineno} (id {pid}) is not a passage ({e!r}); "
                    "expected id, title, text"
                ) from None
    if missing := sorted(wanted - found.keys()):
        raise ValueError(
            f"{path}: {len(missing)} retrieved passage id(s) not in the corpus, e.g. "
            f"{missing[0]!r}; give the corpus the run's index was built from"
        )
    return found


def check_out_path(out: str | os.PathLike) -> None:
    """Refuse an output name FlashRAG would not read: .jsonl (its loader) or .json (its save)."""
    if Path(out).suffix not in SUFFIXES:
        raise ValueError(
            f"{out}: name the output .jsonl (what FlashRAG's Dataset loads) or .json "
            "(what its Dataset.save writes)"
        )


def write_flashrag(out: str | os.PathLike, items: Sequence[FlashragItem]) -> None:
    """Write the items atomically: a JSON list for .json, one item a line for .jsonl."""
    check_out_path(out)
    rows = [item.to_dict() for item in items]
    if Path(out).suffix == ".jsonl":
        write_jsonl(out, rows)
    else:
        write_json(out, rows)


def export_flashrag(
    predictions: str | os.PathLike,
    out: str | os.PathLike,
    *,
    method: str = "agent",
    corpus: str | os.PathLike | None = None,
) -> int:
    """Write `method`'s records of an evaluate stage's predictions file as FlashRAG items.

    Every input is checked before the corpus is scanned: the output name, that the files
    exist and that the predictions hold `method`. Returns how many items were written.

    Raises:
        FileNotFoundError: the predictions or the corpus file is missing.
        ValueError: a bad output name, an unknown method, or a retrieved id not in the corpus.
    """
    check_out_path(out)
    if not Path(predictions).is_file():
        raise FileNotFoundError(
            f"{predictions}: no such predictions file; the evaluate stage writes "
            "runs/<checkpoint>/predictions.jsonl (`dvc repro evaluate@<checkpoint>`)"
        )
    if corpus is not None and not Path(corpus).is_file():
        raise FileNotFoundError(f"{corpus}: no such corpus file (data/prepared/corpus.jsonl?)")
    records = select_method(read_trajectories(predictions), method, str(predictions))
    passages = None
    if corpus is not None:
        passages = read_passages(corpus, (pid for r in records for pid in retrieved_ids(r)))
    items = [to_flashrag(r, passages) for r in records]
    write_flashrag(out, items)
    return len(items)
