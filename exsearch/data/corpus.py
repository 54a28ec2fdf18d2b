r"""The passage corpus: corpus files read as `Passage`s, de-duplicated under content-hash ids.

Corpus formats (`CorpusFile.format`): FlashRAG `{id, contents: '"Title"\ntext'}` (e.g. its
`wiki18_100w.jsonl`), `title_text` (`{title, text}` records), `title_sentences` (one JSON
object, title → sentences) and `dpr_tsv` (DPR's `psgs_w100.tsv`: tab-separated, CSV-quoted,
header `id text title`). Corpus files are streamed, never read whole; `fetch_corpus_file`
downloads a missing one from its `url`.

Texts are normalised (`normalise_text`) before they are compared or stored, so a question's
gold `(title, paragraph)` is exactly the `(title, text)` of a corpus passage. Passage ids are
content hashes of the normalised (title, text), so a passage keeps its id whatever files,
order or limits the corpus was built from.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
import shutil
import unicodedata
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from exsearch.config import CorpusFile
from exsearch.data.source_records import InvalidRecord, id_note, read_records, require
from exsearch.files import atomic_path, read_json, text_lines
from exsearch.schema import Passage

Context = tuple[str, str]  # (title, paragraph text)


def read_corpus(spec: CorpusFile) -> Iterator[Passage]:
    """Yield the passages of one corpus file (ids as in the file; `CorpusBuilder` re-ids them).

    Raises:
        ValueError: a record is not JSON or lacks its fields, naming the file and line/record.
    """
    records, fields = CORPUS_READERS[spec.format]
    for n, (where, rec) in enumerate(records(spec.path), 1):
        if spec.limit is not None and n > spec.limit:
            return
        try:
            if isinstance(rec, InvalidRecord):
                raise rec
            title, text = fields(rec)
        except (InvalidRecord, TypeError) as e:
            raise ValueError(f"{where}{id_note(rec)}: {e}") from None
        pid = rec.get("id", n - 1) if isinstance(rec, dict) else n - 1
        yield Passage(id=str(pid), title=title.strip(), text=text.strip())


def _title_sentence_records(path: Path) -> Iterable[tuple[str, Any]]:
    """One JSON object title → sentences, as `{title, text}` records."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: title_sentences expects one JSON object title → sentences")
    return (
        (f"{path}: title {t!r}", {"title": t, "text": join_sentences(s)}) for t, s in data.items()
    )


def _title_text(rec: Any) -> Context:
    return require(rec, "title", str), require(rec, "text", str)


def _flashrag_contents(rec: Any) -> Context:
    return _split_contents(require(rec, "contents", str))


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


DPR_COLUMNS = ("id", "text", "title")


def _dpr_tsv_records(path: str | Path) -> Iterator[tuple[str, Any]]:
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


def _split_contents(contents: str) -> Context:
    r"""FlashRAG `contents` is '"Title"\ntext'; the quotes are sometimes missing."""
    title, sep, text = contents.partition("\n")
    if not sep:
        return "", contents
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text


Records = Callable[[Path], Iterable[tuple[str, Any]]]

# `CorpusFile.format` → (the file's records with where each is, a record's (title, text)).
# exsearch.config.data lists the same names (tests/test_registries.py checks it).
CORPUS_READERS: dict[str, tuple[Records, Callable[[Any], Context]]] = {
    "flashrag": (read_records, _flashrag_contents),
    "title_text": (read_records, _title_text),
    "title_sentences": (_title_sentence_records, _title_text),
    "dpr_tsv": (_dpr_tsv_records, _title_text),
}
