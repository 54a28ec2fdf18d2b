"""Atomic writes and JSONL helpers: an output is either whole or absent, never half-written."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of `path` whose writer is gone; return them.

    `atomic_path` names its temporary folder `.<name>.<pid>.<random>`; a writer killed before its
    `finally` (kill -9, an out-of-memory kill) leaves it behind, with a half-written checkpoint
    of gigabytes, say. A folder whose process no longer runs is such a leftover; one whose
    process runs (another writer of the same path) is left alone.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.*"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if tmp.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    What killed writers of `path` left behind is removed first (`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temps(path):
        log.info("removed %s, left by a writer that was killed", stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", dir=path.parent))
    target = tmp / path.name
    try:
        if is_dir:
            target.mkdir()
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy folder `src` onto `dst` atomically (a model copied unchanged, say)."""
    with atomic_path(dst, is_dir=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically; return how many were written."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def not_utf8(path: str | os.PathLike, data: bytes, err: UnicodeDecodeError, line: int = 1) -> str:
    """`path:line: not UTF-8 …` for bytes `data` (starting at `line`) that failed to decode."""
    line += data.count(b"\n", 0, err.start)
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    return (
        f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x} at column {column}); "
        "convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
    )


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 file; bytes that are not UTF-8 raise ValueError naming file and line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(not_utf8(path, data, e)) from None


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield `(line number, line)` of a UTF-8 file, newlines kept, streamed.

    A line that is not UTF-8 raises ValueError naming file and line (text-mode reading would
    name only a byte offset inside a read buffer).
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(not_utf8(path, raw, e, lineno)) from None


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield JSON objects; a bad line raises ValueError naming file and line."""
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON; bad syntax or a byte that is not UTF-8 raises ValueError naming file and line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
