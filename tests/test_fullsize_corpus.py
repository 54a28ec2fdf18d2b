import gzip
import json
from pathlib import Path

import bm25s
import numpy as np
import pytest

from exsearch.config.data import CorpusFile
from exsearch.config.params import IndexConfig, parse_params
from exsearch.data.corpus import fetch_corpus_file, passage_id, read_corpus
from exsearch.data.preparation import prepare
from exsearch.retrieval import bm25_build, make_tokenizer

# DPR's psgs_w100.tsv layout: a header, tab-separated, text CSV-quoted with doubled quotes.
DPR_TSV = (
    "id\ttext\ttitle\n"
    '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet, high priest."\tAaron\n'
    "2\tGod at Sinai granted Aaron the priesthood.\tAaron\n"
    "3\tThe Tower is in Town.\tTower\n"
    "4\tGod at Sinai granted Aaron the priesthood.\tAaron\n"
)


@pytest.fixture
def dpr_tsv(tmp_path) -> Path:
    path = tmp_path / "psgs_w100.tsv"
    path.write_text(DPR_TSV, encoding="utf-8")
    return path


def _passages(path: Path, **kw) -> list[tuple[str, str, str]]:
    spec = CorpusFile(path=str(path), format="dpr_tsv", **kw)
    return [(p.id, p.title, p.text) for p in read_corpus(spec)]


# ---- the DPR reader -----------------------------------------------------------------------------


def test_dpr_tsv_reads_id_title_and_unquoted_text(dpr_tsv):
    assert _passages(dpr_tsv) == [
        ("1", "Aaron", 'Aaron Aaron ( or ; "Ahärôn") is a prophet, high priest.'),
        ("2", "Aaron", "God at Sinai granted Aaron the priesthood."),
        ("3", "Tower", "The Tower is in Town."),
        ("4", "Aaron", "God at Sinai granted Aaron the priesthood."),
    ]


def test_dpr_tsv_columns_are_found_by_header_name(tmp_path):
    path = tmp_path / "reordered.tsv"
    path.write_text("title\tid\ttext\nLima\tx7\tLima is the capital of Peru.\n", encoding="utf-8")
    assert _passages(path) == [("x7", "Lima", "Lima is the capital of Peru.")]


def test_dpr_tsv_limit_keeps_the_first_rows(dpr_tsv):
    assert [p[0] for p in _passages(dpr_tsv, limit=2)] == ["1", "2"]


def test_dpr_tsv_without_its_header_names_the_missing_columns(tmp_path):
    path = tmp_path / "no_header.tsv"
    path.write_text("1\tSome text.\tLima\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no_header\.tsv:1: .*missing id, text, title"):
        _passages(path)


def test_dpr_tsv_row_with_a_missing_column_names_its_line(tmp_path):
    path = tmp_path / "short.tsv"
    path.write_text("id\ttext\ttitle\n1\tfine\tA\n2\tno title here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"short\.tsv:3.*2 columns, the header has 3"):
        _passages(path)


# ---- download -----------------------------------------------------------------------------------


def test_missing_corpus_file_is_downloaded_and_gunzipped(tmp_path):
    source = tmp_path / "remote" / "psgs_w100.tsv.gz"
    source.parent.mkdir()
    source.write_bytes(gzip.compress(DPR_TSV.encode("utf-8")))
    target = tmp_path / "external" / "psgs_w100.tsv"
    spec = CorpusFile(path=str(target), format="dpr_tsv", url=source.as_uri())

    assert fetch_corpus_file(spec) == target
    assert target.read_text(encoding="utf-8") == DPR_TSV
    assert [p.name for p in target.parent.iterdir()] == ["psgs_w100.tsv"]  # no temporary left


def test_gz_target_keeps_the_file_compressed(tmp_path):
    source = tmp_path / "psgs.tsv.gz"
    source.write_bytes(gzip.compress(DPR_TSV.encode("utf-8")))
    target = tmp_path / "copy" / "psgs.tsv.gz"
    fetch_corpus_file(CorpusFile(path=str(target), format="dpr_tsv", url=source.as_uri()))
    assert target.read_bytes() == source.read_bytes()


def test_existing_file_is_never_downloaded(dpr_tsv, tmp_path):
    url = (tmp_path / "does-not-exist.gz").as_uri()
    spec = CorpusFile(path=str(dpr_tsv), format="dpr_tsv", url=url)
    assert fetch_corpus_file(spec) == dpr_tsv
    assert dpr_tsv.read_text(encoding="utf-8") == DPR_TSV


def test_failed_download_names_the_url_and_leaves_nothing(tmp_path):
    url = (tmp_path / "nowhere.tsv.gz").as_uri()
    target = tmp_path / "external" / "psgs_w100.tsv"
    with pytest.raises(OSError, match=r"psgs_w100\.tsv: downloading .*nowhere\.tsv\.gz failed"):
        fetch_corpus_file(CorpusFile(path=str(target), format="dpr_tsv", url=url))
    assert not target.parent.exists() or not any(target.parent.iterdir())


def test_truncated_gzip_download_leaves_nothing(tmp_path):
    source = tmp_path / "cut.tsv.gz"
    source.write_bytes(gzip.compress(DPR_TSV.encode("utf-8") * 50)[:-40])
    target = tmp_path / "external" / "cut.tsv"
    with pytest.raises(OSError, match="downloading"):
        fetch_corpus_file(CorpusFile(path=str(target), format="dpr_tsv", url=source.as_uri()))
    assert not target.exists()


# ---- streamed prepare ---------------------------------------------------------------------------


def _cfg(tmp_path: Path, corpus: list[dict]):
    train = tmp_path / "train.json"
    train.write_text(
        json.dumps(
            [
                {
                    "_id": "a",
                    "question": "Where is the Tower?",
                    "answer": "Town",
                    "context": [["Tower", ["The Tower is in Town."]], ["Town", ["Town is big."]]],
                    "supporting_facts": [["Tower", 0], ["Town", 0]],
                }
            ]
        )
    )
    raw = {
        "prepare": {
            "train": [{"path": str(train), "format": "hotpotqa", "dataset": "hp"}],
            "dev": [{"path": str(train), "format": "hotpotqa", "dataset": "hp"}],  # no new context
            "corpus": corpus,
        }
    }
    return parse_params(raw).prepare


def test_streamed_corpus_equals_the_in_memory_one_and_is_deduplicated(tmp_path, dpr_tsv):
    cfg = _cfg(tmp_path, [{"path": str(dpr_tsv), "format": "dpr_tsv"}])
    in_memory = prepare(cfg)
    streamed = []
    out = prepare(cfg, sink=streamed.append)

    assert out.corpus == [] and streamed == in_memory.corpus
    # 2 contexts, then DPR rows 1 and 2; row 3 repeats a context, row 4 repeats row 2.
    assert [(p.title, p.text[:12]) for p in streamed] == [
        ("Tower", "The Tower is"),
        ("Town", "Town is big."),
        ("Aaron", "Aaron Aaron "),
        ("Aaron", "God at Sinai"),
    ]
    assert [p.id for p in streamed] == [passage_id(p.title, p.text) for p in streamed]
    assert out.stats["corpus"]["passages"] == 4
    assert out.stats["corpus"]["files"][str(dpr_tsv)] == {
        "passages": 4,
        "new_passages": 2,
        "duplicate_passages": 2,
    }


def test_prepare_downloads_a_missing_corpus_file(tmp_path):
    source = tmp_path / "psgs_w100.tsv.gz"
    source.write_bytes(gzip.compress(DPR_TSV.encode("utf-8")))
    target = tmp_path / "external" / "psgs_w100.tsv"
    spec = {"path": str(target), "format": "dpr_tsv", "url": source.as_uri()}
    got = prepare(_cfg(tmp_path, [spec]))
    assert target.is_file() and got.stats["corpus"]["files"][str(target)]["passages"] == 4


# ---- the bounded-memory BM25 build --------------------------------------------------------------


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(400)] + ["the", "of", "and", "running", "runs", "ran"]
    zipf = 1 / np.arange(1, len(words) + 1)
    zipf /= zipf.sum()
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 40), p=zipf)) for _ in range(n)]
    return [*texts, "", "the of and"]  # an empty passage and a stop-words-only one


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25l", "bm25+"])
def test_chunked_build_equals_bm25s_index(method, monkeypatch):
    monkeypatch.setattr(bm25_build, "CHUNK_TOKENS", 500)  # many chunks
    tokenizer = make_tokenizer(IndexConfig(method=method))
    ids = list(tokenizer.streaming_tokenize(_texts(600), update_vocab=True, allow_empty=True))
    vocab = tokenizer.get_vocab_dict()
    want = bm25s.BM25(method=method)
    want.index((ids, vocab), show_progress=False)
    got = bm25_build.build_bm25(iter(ids), vocab, bm25s.BM25(method=method))

    assert got.scores["num_docs"] == want.scores["num_docs"] == 602
    for key in ("data", "indices", "indptr"):
        assert got.scores[key].dtype == want.scores[key].dtype
        np.testing.assert_array_equal(got.scores[key], want.scores[key])
    if method in ("bm25l", "bm25+"):
        np.testing.assert_array_equal(got.nonoccurrence_array, want.nonoccurrence_array)
    query = tokenizer.tokenize(["w3 w17 running"], update_vocab=False, show_progress=False)[0]
    np.testing.assert_array_equal(got.get_scores_from_ids(query), want.get_scores_from_ids(query))


def test_build_of_no_documents_is_a_clear_error():
    with pytest.raises(ValueError, match="corpus is empty"):
        bm25_build.build_bm25(iter([]), {"": 0}, bm25s.BM25())
