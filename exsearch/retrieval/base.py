"""What every index folder holds, whatever its kind.

The passages (`passages.jsonl`, with the byte offset of every line in `passages.offsets.npy`,
so a memory-mapped index reads one passage without the others), the meta file
(`exsearch_index.json`: kind, IndexConfig, and the size and SHA-256 of every other file), and
the hit and passage formats the agent sees. BM25 (`bm25.py`) and dense (`dense.py`) indexes
build on it.

The meta file's manifest is what lets a damaged index fail instead of retrieving garbage: a
score array overwritten with bytes of the same size still loads, and BM25 over it returns
other passages with nothing said. Opening checks every file's size (free); `load_retriever`
with `verify=True`, which the stages use, also checks the hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap as mmap_module
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import numpy as np

from exsearch.schema import Passage

REBUILD = "rebuild it with `dvc repro index` (or `python -m stages.index`)"


META_FILE = "exsearch_index.json"


PASSAGES_FILE = "passages.jsonl"


OFFSETS_FILE = "passages.offsets.npy"


# 2: the meta file lists every file's size and SHA-256.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class Hit:
    """One search result; `rank` is 1-based (1 = best), the number the agent shows as "[1]"."""

    passage: Passage
    score: float
    rank: int


# `format_passage`'s rendering, read back: "[n] Title: <title> Content: ".
_SHOWN_TITLE = re.compile(r"^\[\d+\] Title: (.*?) Content: ", re.MULTILINE)


def shown_titles(text: str) -> list[str]:
    """The titles of the numbered passages `format_passage` rendered into `text`, in order.

    What a trajectory was shown, read from its chat: the prompt may have dropped passages the
    search returned (the context budget), so the chat, not the search, says what was seen.
    """
    return _SHOWN_TITLE.findall(text)


@runtime_checkable
class Retriever(Protocol):
    """What the agent and the warm-up need of an index, whatever its kind."""

    def search(self, queries: Sequence[str], k: int) -> Sequence[Sequence[Hit]]:
        """Top-`k` hits per query, best first; an empty query gets none."""
        ...

    def iter_passages(self) -> Iterator[Passage]:
        """Every indexed passage in index order."""
        ...


def format_passage(p: Passage, index: int | None = None, max_words: int | None = None) -> str:
    """Render a passage for a prompt: `[index] Title: … Content: …`.

    `index` is the 1-based number shown to the model (no prefix when None). `max_words` keeps
    the first words of the text (whitespace folded); the title is never cut.
    """
    text = p.text
    if max_words is not None:
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        text = " ".join(text.split()[:max_words])
    out = f"Title: {p.title} Content: {text}"
    if index is None:
        return out
    if index < 1:
        raise ValueError(f"passage numbers shown to the model are 1-based, got {index}")
    return f"[{index}] {out}"


class CorruptIndex(ValueError):
    """An index folder that is there but cannot be read; the message names it and the fix."""


# What numpy, json/orjson (bm25s) and the file system raise on truncated or garbled files.
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError)


@contextlib.contextmanager
def reading_index(directory: Path) -> Iterator[None]:
    """Turn the raw errors of reading a damaged index into one `CorruptIndex` naming the folder."""
    try:
        yield
    except CorruptIndex:
        raise
    except _UNREADABLE as e:
        raise CorruptIndex(
            f"{directory}: the index is unreadable, probably truncated or damaged "
            f"({type(e).__name__}: {e}); {REBUILD}"
        ) from e


class PassageFile:
    """Passages on disk, read one line at a time through mmap (for memory-mapped indexes).

    Opening checks what is cheap to check whatever the size: the offsets span the file exactly
    (no truncation) and a few passages spread over the file parse; a passage that does not parse
    later raises `CorruptIndex` too.
    """

    SPOT_CHECKS = 16

    def __init__(self, directory: Path):
        self.directory = directory
        self._offsets = np.load(directory / OFFSETS_FILE, mmap_mode="r")
        path = directory / PASSAGES_FILE
        size = path.stat().st_size
        if len(self._offsets) < 2 or int(self._offsets[0]) != 0 or self._offsets[-1] != size:
            raise CorruptIndex(
                f"{directory}: {PASSAGES_FILE} has {size} bytes but {OFFSETS_FILE} says "
                f"{int(self._offsets[-1]) if len(self._offsets) else 0}: the index is truncated "
                f"or damaged; {REBUILD}"
            )
        with open(path, "rb") as f:
            # The mapping stays valid after the file is closed.
            self._mm = mmap_module.mmap(f.fileno(), 0, access=mmap_module.ACCESS_READ)
        for i in np.unique(np.linspace(0, len(self) - 1, self.SPOT_CHECKS).astype(int)):
            self[int(i)]

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> Passage:
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        try:
            return Passage.from_dict(json.loads(self._mm[start:end]))
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptIndex(
                f"{self.directory}: passage {i} in {PASSAGES_FILE} (bytes {start}-{end}) is "
                f"unreadable ({type(e).__name__}: {e}); the index is damaged; {REBUILD}"
            ) from None


def index_text(p: Passage) -> str:
    """The text a passage is indexed by: its title, then its text."""
    return f"{p.title} {p.text}"


def write_passages(
    passages: Iterable[Passage],
    f: IO[bytes],
    offsets: array,
    text: Callable[[Passage], str] = index_text,
) -> Iterator[str]:
    """Write each passage as a JSON line while yielding `text(p)` (one pass, no copy)."""
    for p in passages:
        offsets.append(f.tell())
        f.write(json.dumps(p.to_dict(), ensure_ascii=False).encode("utf-8") + b"\n")
        yield text(p)
    offsets.append(f.tell())


def all_finite(array: np.ndarray, chunk: int) -> bool:
    """Whether every element of `array` (along its first axis, `chunk` rows at a time) is finite.

    Chunked so a check over a large array holds one chunk's mask, not the whole array's.
    """
    return all(np.isfinite(array[i : i + chunk]).all() for i in range(0, len(array), chunk))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """The size and SHA-256 of every file of an index folder but its meta file, by name.

    Every file: an index is built into a folder of its own (the index stage's temporary one),
    so what is there is what the build wrote.
    """
    return {
        p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != META_FILE
    }


def write_index_meta(directory: Path, meta: dict[str, Any]) -> None:
    """Write the meta file last, with the manifest of every file written before it."""
    meta = {"format": FORMAT_VERSION, **meta, "files": file_manifest(directory)}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def check_index_files(directory: Path, meta: dict[str, Any], *, hashes: bool) -> None:
    """Every file the manifest lists is there with its size, and with `hashes` its SHA-256.

    Raises:
        CorruptIndex: a file is missing, of another size or (with `hashes`) other content.
    """
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise CorruptIndex(f"{directory / META_FILE}: lists no files; {REBUILD}")
    for name, want in files.items():
        path = directory / name
        if not path.is_file():
            raise CorruptIndex(f"{path}: missing from the index; {REBUILD}")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CorruptIndex(
                f"{path}: {size} bytes where {META_FILE} says {want['bytes']}: truncated or "
                f"replaced; {REBUILD}"
            )
        if hashes and _sha256(path) != want["sha256"]:
            raise CorruptIndex(
                f"{path}: its content differs from the SHA-256 in {META_FILE}: damaged or "
                f"edited since the build; {REBUILD}"
            )


def read_index_meta(
    directory: Path, kind: str | None = None, *, hashes: bool = False
) -> dict[str, Any]:
    """Read an index folder's meta file, checking it exists, its format and (if given) its kind.

    Every file's size is checked against the meta file's manifest, and with `hashes` its
    SHA-256 (a read of the whole folder: `check_index_files`). The meta file itself is not
    hashed: its settings are validated where they are read (IndexConfig).
    """
    meta_path = directory / META_FILE
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: no such index folder; build it with `dvc repro index` "
            "(or `python -m stages.index`)"
        )
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path}: not found; {directory} is not an index built by exsearch; {REBUILD}"
        )
    with reading_index(directory):
        meta = json.loads(meta_path.read_bytes())
        if not isinstance(meta, dict):
            raise ValueError(f"{META_FILE} holds {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: index format {meta.get('format')!r}, this code reads "
            f"{FORMAT_VERSION}; {REBUILD}"
        )
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(
            f"{directory}: a {meta.get('kind')} index, not a {kind} one; open it with "
            "exsearch.retrieval.load_retriever, which picks the retriever by kind"
        )
    with reading_index(directory):
        check_index_files(directory, meta, hashes=hashes)
    return meta


class PassageIndex:
    """What every retriever holds: its passages in index order, in memory or mapped from disk."""

    _passages: Sequence[Passage] | PassageFile

    def __len__(self) -> int:
        return len(self._passages)

    def iter_passages(self) -> Iterator[Passage]:
        """Every indexed passage in index order, one at a time (streamed from a mapped index)."""
        return (self._passages[i] for i in range(len(self)))

    def _write_passage_file(self, directory: Path) -> array:
        """Write the passages into `directory`; return their byte offsets."""
        offsets = array("q")
        with open(directory / PASSAGES_FILE, "wb") as f:
            for _ in write_passages(self.iter_passages(), f, offsets):
                pass
        return offsets
