import json

import pytest
from record_files import RAW, write

from exsearch.config.data import CorpusFile
from exsearch.data.corpus import (
    CorpusBuilder,
    join_sentences,
    passage_id,
    read_corpus,
    split_sentences,
)

# --- reading corpus files ----------------------------------------------------------------------


def test_flashrag_corpus_splits_quoted_title_from_text(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [
        {"id": "7", "contents": '"Evan Morris"\nEvan Morris was a lobbyist.'},
        {"id": "8", "contents": "Absalon\ndragged forth"},
        {"id": "9", "contents": "no title"},
    ]
    write(path, rows, jsonl=True)
    got = [
        (p.id, p.title, p.text) for p in read_corpus(CorpusFile(path=str(path), format="flashrag"))
    ]
    assert got == [
        ("7", "Evan Morris", "Evan Morris was a lobbyist."),
        ("8", "Absalon", "dragged forth"),
        ("9", "", "no title"),
    ]


def test_bundled_flashrag_corpora_read_whole():
    sample = list(
        read_corpus(
            CorpusFile(path=str(RAW / "wiki_corpus" / "sample_data.jsonl"), format="flashrag")
        )
    )
    tiny = list(
        read_corpus(
            CorpusFile(path=str(RAW / "wiki_corpus" / "corpus.jsonl"), format="flashrag", limit=4)
        )
    )
    assert len(sample) == 1000 and len(tiny) == 4
    assert all(p.title and p.text for p in sample)


def test_title_text_and_title_sentences_corpora(tmp_path):
    tt = write(tmp_path / "tt.json", [{"title": "A", "text": "alpha"}, {"title": "B", "text": "b"}])
    ts = tmp_path / "ts.json"
    ts.write_text(json.dumps({"A": ["First.", " Second."], "C": ["One.", "Two."]}))
    got_tt = [(p.title, p.text) for p in read_corpus(CorpusFile(path=str(tt), format="title_text"))]
    got_ts = [
        (p.title, p.text) for p in read_corpus(CorpusFile(path=str(ts), format="title_sentences"))
    ]
    assert got_tt == [("A", "alpha"), ("B", "b")]
    assert got_ts == [("A", "First. Second."), ("C", "One. Two.")]


def test_corpus_record_without_text_names_file_and_line(tmp_path):
    path = write(tmp_path / "c.jsonl", [{"id": "1", "contents": "x"}, {"id": "2"}], jsonl=True)
    with pytest.raises(ValueError, match=r"c\.jsonl:2 \(id '2'\): missing key 'contents'"):
        list(read_corpus(CorpusFile(path=str(path), format="flashrag")))


# --- corpus building -------------------------------------------------------------------------


def corpus_of(*sources):
    """The de-duplicated passages of all sources, and how many were dropped."""
    builder = CorpusBuilder()
    dropped = sum(builder.add_all(source)[1] for source in sources)
    return builder.passages, dropped


def test_duplicates_are_merged_by_normalised_title_and_text():
    passages, dropped = corpus_of(
        [("A", "one  two"), ("B", "one two")],
        [("A", "one two\n"), ("A", "   "), ("A", "one two three")],
    )
    assert [(p.title, p.text) for p in passages] == [
        ("A", "one two"),
        ("B", "one two"),
        ("A", "one two three"),
    ]
    assert dropped == 2  # the repeat and the empty text


def test_passage_ids_are_content_hashes_independent_of_order():
    first, _ = corpus_of([("A", "x"), ("B", "y")])
    second, _ = corpus_of([("B", "y"), ("A", " x ")])
    assert {p.title: p.id for p in first} == {p.title: p.id for p in second}
    assert first[0].id == passage_id("A", "x") and first[0].id != first[1].id
    assert len({p.id for p in first}) == 2


def test_builder_reports_added_and_dropped_per_source():
    builder = CorpusBuilder()
    assert builder.add_all([("A", "x"), ("A", "x")]) == (1, 1)
    assert builder.add_all([("A", " x"), ("B", "x")]) == (1, 1)
    assert len(builder) == 2 and ("A", "x  ") in builder


def test_sentence_helpers():
    assert join_sentences(["One.", " Two.", "Three."]) == "One. Two. Three."
    assert split_sentences("George W. Bush met Dr. Who in the U.S. in 1999. Then he left!  Ok") == [
        "George W. Bush met Dr. Who in the U.S. in 1999.",
        "Then he left!",
        "Ok",
    ]
