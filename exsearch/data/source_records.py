"""Records of raw source files, each with where it came from, so errors name a file and line.

A record file is a JSON list or JSONL (one record per line): the first non-blank character
decides. A reader that cannot use a record raises `InvalidRecord` with why; its caller adds
where (`location: why`, with `id_note`), so every message names file, line or index, and id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exsearch.files import read_json, text_lines


class InvalidRecord(ValueError):
    """One source record cannot become a question or passage; the reader adds where it is."""


def read_records(path: str | Path) -> Iterator[tuple[str, Any]]:
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


def id_note(rec: Any) -> str:
    """` (id 'x')` for a record that carries an id under a usual key, else ''; for messages."""
    if isinstance(rec, dict):
        for k in ("_id", "id", "question_id", "idx"):
            if rec.get(k) is not None:
                return f" (id {rec[k]!r})"
    return ""


def require(rec: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    """Return `rec[key]`, which must be present and of type `kind`.

    Raises:
        InvalidRecord: `rec` is not a dict, lacks `key` or holds a value of another type.
    """
    if not isinstance(rec, dict) or key not in rec:
        raise InvalidRecord(f"missing key {key!r}")
    if not isinstance(rec[key], kind):
        raise InvalidRecord(f"key {key!r} has the wrong type ({type(rec[key]).__name__})")
    return rec[key]
