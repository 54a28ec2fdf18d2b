"""Prepared question files: one `Question` per JSONL line, as the prepare stage writes them.

Kept apart from the raw-format readers (`exsearch.data.datasets`) so that the stages that only
read prepared questions depend on this file, not on every reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from exsearch.files import read_jsonl, write_jsonl
from exsearch.schema import Question


def read_questions(path: str | os.PathLike) -> list[Question]:
    """Read a prepared questions file (data/prepared/train.jsonl or dev.jsonl), in file order.

    Raises:
        ValueError: a line is not JSON or not UTF-8, naming the file and line.
    """
    return [Question.from_dict(d) for d in read_jsonl(path)]


def write_questions(path: str | os.PathLike, questions: Iterable[Question]) -> int:
    """Write questions atomically, one per line, for `read_questions`; return how many."""
    return write_jsonl(path, (q.to_dict() for q in questions))
