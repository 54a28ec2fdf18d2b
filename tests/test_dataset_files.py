import json
from pathlib import Path

import pytest
from record_files import RAW, write

from exsearch.config.data import CorpusFile, DatasetFile
from exsearch.data.corpus import CorpusBuilder, read_corpus
from exsearch.data.datasets import read_dataset


def spec(path: Path, fmt: str, dataset: str = "d", limit: int | None = None) -> DatasetFile:
    return DatasetFile(path=str(path), format=fmt, dataset=dataset, limit=limit)


def hotpot_record(qid="q1", answer="Paris", question="Where is the tower?"):
    return {
        "_id": qid,
        "question": question,
        "answer": answer,
        "type": "bridge",
        "level": "easy",
        "context": [
            ["Noise", ["Nothing here.", " Still nothing."]],
            ["Tower", ["The Tower is in Town.", " It is tall."]],
            ["Town", ["Town is a district.", " Town is in Paris.", " Town has a park."]],
        ],
        "supporting_facts": [["Tower", 0], ["Town", 1], ["Town", 0]],
    }


def musique_record(qid="2hop__1_2", answerable=True, answer="Paris"):
    return {
        "id": qid,
        "question": "Which city holds the district where the Tower stands?",
        "answer": answer,
        "answer_aliases": ["City of Paris"],
        "answerable": answerable,
        "paragraphs": [
            {
                "idx": 0,
                "title": "Town",
                "paragraph_text": "Town is old. Town lies in Paris.",
                "is_supporting": True,
            },
            {"idx": 1, "title": "Noise", "paragraph_text": "Nothing.", "is_supporting": False},
            {
                "idx": 2,
                "title": "Tower",
                "paragraph_text": "The Tower stands in Town.",
                "is_supporting": True,
            },
        ],
        "question_decomposition": [
            {
                "id": 1,
                "question": "Tower >> located in",
                "answer": "Town",
                "paragraph_support_idx": 2,
            },
            {
                "id": 2,
                "question": "Which city holds #1 ?",
                "answer": "Paris",
                "paragraph_support_idx": 0,
            },
        ],
    }


def ircot_record(qid="i1", spans=("Paris",), number="", date=None):
    return {
        "question_id": qid,
        "question_text": "Which city holds the district where the Tower stands?",
        "answers_objects": [
            {
                "spans": list(spans),
                "number": number,
                "date": date or {"day": "", "month": "", "year": ""},
            }
        ],
        "contexts": [
            {
                "id": "0",
                "title": "Town",
                "paragraph_text": "Town is old.  Town lies in Paris.",
                "is_supporting": True,
            },
            {"id": "1", "title": "Noise", "paragraph_text": "Nothing.", "is_supporting": False},
            {
                "id": "2",
                "title": "Tower",
                "paragraph_text": "The Tower stands in Town.",
                "is_supporting": True,
            },
        ],
    }


# --- readers -----------------------------------------------------------------------------------


def test_hotpotqa_reader_builds_question_contexts_and_support(tmp_path):
    got = read_dataset(spec(write(tmp_path / "h.json", [hotpot_record()]), "hotpotqa", "hp"))
    (q,) = got.questions
    assert (q.id, q.answers, q.dataset) == ("q1", ["Paris"], "hp")
    assert q.supporting_titles == ["Tower", "Town"]
    assert q.extra["type"] == "bridge" and q.extra["level"] == "easy"
    assert got.contexts[1] == ("Tower", "The Tower is in Town. It is tall.")
    hops = q.extra["support"]
    assert [h["title"] for h in hops] == ["Tower", "Town"]
    assert hops[0]["sentences"] == ["The Tower is in Town."]
    # sentences of one title keep paragraph order, whatever order the facts list them in
    assert hops[1]["sentences"] == ["Town is a district.", "Town is in Paris."]
    assert hops[1]["paragraph"] == "Town is a district. Town is in Paris. Town has a park."
    assert hops[1]["sub_question"] is None and hops[1]["sub_answer"] is None


def test_hotpotqa_reader_reads_jsonl_with_one_record_per_line(tmp_path):
    path = write(tmp_path / "h.jsonl", [hotpot_record("a"), hotpot_record("b")], jsonl=True)
    assert [q.id for q in read_dataset(spec(path, "hotpotqa")).questions] == ["a", "b"]


def test_hotpotqa_fact_past_paragraph_end_falls_back_to_whole_paragraph(tmp_path):
    rec = hotpot_record()
    rec["supporting_facts"] = [["Tower", 7], ["Town", 1]]
    (q,) = read_dataset(spec(write(tmp_path / "h.json", [rec]), "hotpotqa")).questions
    assert q.extra["support"][0]["sentences"] == ["The Tower is in Town.", "It is tall."]


def test_hotpotqa_fact_title_outside_context_is_invalid(tmp_path):
    rec = hotpot_record()
    rec["supporting_facts"] = [["Elsewhere", 0]]
    with pytest.raises(ValueError, match=r"record 0 \(id 'q1'\).*'Elsewhere'"):
        read_dataset(spec(write(tmp_path / "h.json", [rec]), "hotpotqa"))


def test_2wiki_reader_on_bundled_fixture_keeps_type_and_evidences():
    got = read_dataset(spec(RAW / "2wikimultihopqa" / "qa_sub.json", "2wiki", "2wiki"))
    assert len(got.questions) == 2
    q = got.questions[0]
    assert q.answers == ["20 March 851"]
    assert q.supporting_titles == ["Lothair II", "Ermengarde of Tours"]
    assert q.extra["type"] == "compositional"
    assert q.extra["evidences"][0] == ["Lothair II", "mother", "Ermengarde of Tours"]
    # 2Wiki sentences have no leading space: the paragraph must not glue them together
    assert ". She was" in dict(got.contexts)["Teutberga"]


def test_2wiki_support_paragraphs_match_the_bundled_sub_corpus():
    got = read_dataset(spec(RAW / "2wikimultihopqa" / "qa_sub.json", "2wiki"))
    corpus = {
        p.title: p.text
        for p in read_corpus(
            CorpusFile(path=str(RAW / "2wikimultihopqa" / "sub_corpus.json"), format="title_text")
        )
    }
    hops = [h for q in got.questions for h in q.extra["support"]]
    assert len(hops) == 4
    for hop in hops:
        assert " ".join(corpus[hop["title"]].split()) == hop["paragraph"]


def test_ircot_reader_answers_support_and_answer_paragraph_last(tmp_path):
    got = read_dataset(spec(write(tmp_path / "i.jsonl", [ircot_record()], jsonl=True), "ircot"))
    (q,) = got.questions
    assert q.id == "i1" and q.answers == ["Paris"]
    assert len(got.contexts) == 3
    # the file gives no hop order; the paragraph that states the answer is the last hop
    assert q.supporting_titles == ["Tower", "Town"]
    assert q.extra["support"][1]["sentences"] == ["Town is old.", "Town lies in Paris."]
    assert q.extra["support"][1]["paragraph"] == "Town is old. Town lies in Paris."


@pytest.mark.parametrize(
    ("number", "date", "expected"),
    [("42", None, ["42"]), ("", {"day": "3", "month": "May", "year": "1999"}, ["3 May 1999"])],
)
def test_ircot_answer_falls_back_to_number_then_date(tmp_path, number, date, expected):
    rec = ircot_record(spans=(), number=number, date=date)
    path = write(tmp_path / "i.jsonl", [rec], jsonl=True)
    assert read_dataset(spec(path, "ircot")).questions[0].answers == expected


def test_musique_support_follows_decomposition_with_references_filled(tmp_path):
    got = read_dataset(spec(write(tmp_path / "m.json", [musique_record()]), "musique", "mq"))
    (q,) = got.questions
    assert q.answers == ["Paris", "City of Paris"]
    assert q.extra["type"] == "2hop" and q.extra["answerable"] is True
    hops = q.extra["support"]
    assert [h["title"] for h in hops] == ["Tower", "Town"]
    assert [h["sub_question"] for h in hops] == ["Tower >> located in", "Which city holds Town ?"]
    assert [h["sub_answer"] for h in hops] == ["Town", "Paris"]
    # only the sentence that carries the hop's answer is kept
    assert hops[1]["sentences"] == ["Town lies in Paris."]
    assert len(got.contexts) == 3


def test_musique_unanswerable_rows_are_kept_only_with_an_answer(tmp_path):
    rows = [musique_record("a", answerable=False), musique_record("b", False, answer="")]
    rows[1]["answer_aliases"] = []
    got = read_dataset(spec(write(tmp_path / "m.json", rows), "musique"), skip_invalid=True)
    assert [q.id for q in got.questions] == ["a"]
    assert got.questions[0].extra["answerable"] is False
    assert len(got.skipped) == 1 and "no answer" in got.skipped[0]


def test_flashrag_questions_on_bundled_nq():
    got = read_dataset(spec(RAW / "nq" / "test.jsonl", "flashrag", "nq"))
    assert len(got.questions) == 17 and got.contexts == []
    assert got.questions[2].id == "test_2"
    assert got.questions[2].answers == ["Olivia", "MFSK"]
    assert got.questions[2].extra["support"] == []


def test_flashrag_reader_accepts_idx_and_single_answer_on_bundled_bamboogle():
    got = read_dataset(spec(RAW / "bamboogle" / "bamboogle.jsonl", "flashrag", "bamboogle"))
    assert len(got.questions) == 125
    assert got.questions[0].id == "1" and got.questions[0].answers == ["james madison"]


# --- invalid rows and limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"id": "x", "question": "Q?", "golden_answers": []}, "no answer"),
        ({"id": "x", "question": "Q?", "golden_answers": ["  "]}, "no answer"),
        ({"id": "x", "question": "", "golden_answers": ["a"]}, "no question text"),
        ({"id": "x", "golden_answers": ["a"]}, "no question text"),
    ],
)
def test_invalid_jsonl_row_error_names_file_and_line(tmp_path, bad, why):
    rows = [{"id": "ok", "question": "Q?", "answer": "a"}, bad]
    path = write(tmp_path / "q.jsonl", rows, jsonl=True)
    with pytest.raises(ValueError, match=rf"q\.jsonl:2 \(id 'x'\): {why}"):
        read_dataset(spec(path, "flashrag"))


def test_unparseable_jsonl_line_is_an_invalid_row(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "1", "question": "Q?", "answer": "a"}\n{"id": oops\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:2: not valid JSON"):
        read_dataset(spec(path, "flashrag"))
    assert len(read_dataset(spec(path, "flashrag"), skip_invalid=True).skipped) == 1


def test_unparseable_json_list_fails_even_when_skipping(tmp_path):
    path = tmp_path / "h.json"
    path.write_text('[\n{"_id": "1",\n oops}\n]')
    with pytest.raises(ValueError, match=r"h\.json:3: not valid JSON"):
        read_dataset(spec(path, "hotpotqa"), skip_invalid=True)


def test_malformed_record_names_record_index_and_id(tmp_path):
    rec = hotpot_record("q9")
    rec["context"] = [["only a title"]]
    path = write(tmp_path / "h.json", [hotpot_record(), rec])
    with pytest.raises(ValueError, match=r"h\.json: record 1 \(id 'q9'\): malformed hotpotqa"):
        read_dataset(spec(path, "hotpotqa"))


def test_skip_invalid_skips_and_counts_every_bad_row(tmp_path):
    rows = [
        hotpot_record("a"),
        hotpot_record("b", answer=""),
        hotpot_record("c"),
        hotpot_record("d", question=" "),
        hotpot_record("a"),
    ]
    got = read_dataset(spec(write(tmp_path / "h.json", rows), "hotpotqa"), skip_invalid=True)
    assert [q.id for q in got.questions] == ["a", "c"]
    assert len(got.skipped) == 3
    assert "record 4 (id 'a'): question id 'a' appears twice" in got.skipped[2]
    # contexts come from kept questions only
    assert len(got.contexts) == 6


def test_limit_keeps_the_first_n_valid_questions(tmp_path):
    rows = [
        hotpot_record("a", answer=""),
        hotpot_record("b"),
        hotpot_record("c"),
        hotpot_record("d"),
    ]
    path = write(tmp_path / "h.json", rows)
    got = read_dataset(spec(path, "hotpotqa", limit=2), skip_invalid=True)
    assert [q.id for q in got.questions] == ["b", "c"]
    assert len(got.contexts) == 6


# --- bundled data ----------------------------------------------------------------------------

BUNDLED = [
    ("hotpotqa/hotpotqa_train.json", "hotpotqa", 100),
    ("hotpotqa/hotpotqa_500.first250.json", "hotpotqa", 250),
    ("musique/musique_train.json", "musique", 100),
    ("musique/musique_ans_train_2hop_samples.json", "musique", 100),
    ("musique/musique_ans_train_3hop_samples.json", "musique", 100),
    ("musique/musique_ans_train_4hop_samples.json", "musique", 100),
    ("2wikimultihopqa/2wiki_500.json", "2wiki", 500),
    ("hotpotqa/dev_subsampled.odd250.jsonl", "ircot", 250),
]


@pytest.mark.parametrize(("rel", "fmt", "count"), BUNDLED)
def test_bundled_question_files_read_whole(rel, fmt, count):
    got = read_dataset(spec(RAW / rel, fmt))
    assert len(got.questions) == count and got.skipped == []
    assert all(len(q.extra["support"]) >= 2 for q in got.questions)
    assert all(q.supporting_titles for q in got.questions)


def test_every_gold_supporting_paragraph_of_bundled_data_is_in_the_corpus():
    sets = [read_dataset(spec(RAW / rel, fmt)) for rel, fmt, _ in BUNDLED]
    builder = CorpusBuilder()
    for s in sets:
        builder.add_all(s.contexts)
    hops = [h for s in sets for q in s.questions for h in q.extra["support"]]
    assert len(hops) > 3000
    by_key = {(p.title, p.text) for p in builder.passages}
    assert all((h["title"], h["paragraph"]) in by_key for h in hops)
    # and every supporting sentence is part of its paragraph
    assert all(s in h["paragraph"] for h in hops for s in h["sentences"])


def test_hotpotqa_reader_reads_the_hugging_face_layout_of_the_bundled_sample(tmp_path):
    # A slice of the bundled file: `context` and `supporting_facts` are dicts of lists there.
    records = json.loads((RAW / "hotpotqa/hotpotqa_500.first250.json").read_text())[:3]
    assert isinstance(records[0]["context"], dict)
    got = read_dataset(spec(write(tmp_path / "hf.json", records), "hotpotqa", "hotpotqa"))
    assert [q.id for q in got.questions] == [r["id"] for r in records]
    for q, rec in zip(got.questions, records, strict=True):
        titles = list(dict.fromkeys(rec["supporting_facts"]["title"]))
        assert q.supporting_titles == titles
        assert q.answers == [rec["answer"]]
        by_title = dict(zip(rec["context"]["title"], rec["context"]["sentences"], strict=True))
        for hop in q.extra["support"]:
            ids = [
                i
                for t, i in zip(
                    rec["supporting_facts"]["title"],
                    rec["supporting_facts"]["sent_id"],
                    strict=True,
                )
                if t == hop["title"]
            ]
            assert hop["sentences"] == [by_title[hop["title"]][i].strip() for i in ids]
    assert len(got.contexts) == sum(len(r["context"]["title"]) for r in records)


def test_skip_and_limit_split_one_file_between_dev_and_train(tmp_path):
    path = write(
        tmp_path / "q.json",
        [
            {
                "_id": f"q{i}",
                "question": "?",
                "answer": "a",
                "context": [["T", ["s."]]],
                "supporting_facts": [["T", 0]],
            }
            for i in range(5)
        ],
    )
    dev = read_dataset(DatasetFile(path=str(path), format="hotpotqa", dataset="d", limit=2))
    train = read_dataset(DatasetFile(path=str(path), format="hotpotqa", dataset="d", skip=2))
    assert [q.id for q in dev.questions] == ["q0", "q1"]
    assert [q.id for q in train.questions] == ["q2", "q3", "q4"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            lambda r: r["context"].__setitem__(0, ["Noise", "a plain string"]),
            r"context paragraph 'Noise' must be a list of strings, got str 'a plain string'",
        ),
        (lambda r: r.__setitem__("answer", ["Paris"]), r"answer \['Paris'\] is a list"),
        (lambda r: r.__setitem__("answer_aliases", "Paris"), r"answer_aliases must be a list"),
        (
            lambda r: r.__setitem__("supporting_facts", [["Tower", "0"]]),
            r"supporting fact 'Tower': sentence index '0'",
        ),
    ],
)
def test_a_field_of_the_wrong_type_is_an_error_naming_file_record_and_field(tmp_path, change, why):
    rec = hotpot_record("q2")
    change(rec)
    path = write(tmp_path / "h.json", [hotpot_record(), rec])
    with pytest.raises(ValueError, match=rf"h\.json: record 1 \(id 'q2'\): {why}"):
        read_dataset(spec(path, "hotpotqa"))
    got = read_dataset(spec(path, "hotpotqa"), skip_invalid=True)
    assert [q.id for q in got.questions] == ["q1"] and len(got.skipped) == 1


def test_a_musique_paragraph_without_text_is_an_error_not_a_key_error(tmp_path):
    rec = musique_record()
    rec["paragraphs"][0]["paragraph_text"] = None
    path = write(tmp_path / "m.json", [rec])
    with pytest.raises(ValueError, match=r"key 'paragraph_text' has the wrong type"):
        read_dataset(spec(path, "musique"))
