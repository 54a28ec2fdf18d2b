import json
from pathlib import Path

import pytest
import yaml

from exsearch.config.params import parse_params
from exsearch.data.preparation import prepare
from exsearch.data.questions import read_questions
from exsearch.files import read_jsonl
from exsearch.schema import Passage
from stages.prepare import main

RAW = Path(__file__).resolve().parents[1] / "data" / "raw"


def hotpot(qid: str, answer: str = "Paris") -> dict:
    return {
        "_id": qid,
        "question": f"Question {qid}?",
        "answer": answer,
        "type": "bridge",
        "context": [
            ["Tower", ["The Tower is in Town."]],
            [f"Noise {qid}", ["Nothing here."]],
            ["Town", ["Town is in Paris."]],
        ],
        "supporting_facts": [["Tower", 0], ["Town", 0]],
    }


def prepare_cfg(tmp_path: Path, **overrides):
    train = tmp_path / "train.json"
    train.write_text(json.dumps([hotpot("a"), hotpot("b", answer=""), hotpot("c")]))
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"id": "d1", "question": "Who?", "golden_answers": ["Me"]}) + "\n")
    section = {
        "train": [{"path": str(train), "format": "hotpotqa", "dataset": "hp"}],
        "dev": [{"path": str(dev), "format": "flashrag", "dataset": "nq"}],
        "corpus": [
            {"path": str(RAW / "wiki_corpus" / "corpus.jsonl"), "format": "flashrag", "limit": 3}
        ],
        "skip_invalid": True,
        **overrides,
    }
    return {"prepare": section}


def test_prepare_stage_runs_end_to_end(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(prepare_cfg(tmp_path)))
    out = tmp_path / "prepared"
    main(["--params", str(params), "--out-dir", str(out)])

    train = read_questions(out / "train.jsonl")
    dev = read_questions(out / "dev.jsonl")
    corpus = [Passage.from_dict(r) for r in read_jsonl(out / "corpus.jsonl")]
    stats = json.loads((out / "stats.json").read_text())

    assert [q.id for q in train] == ["a", "c"] and [q.id for q in dev] == ["d1"]
    assert train[0].extra["support"][0]["title"] == "Tower"
    # Tower and Town are shared by both questions: 4 context passages + 3 corpus passages
    assert len(corpus) == 7 and len({p.id for p in corpus}) == 7
    assert stats["train"]["questions"] == 2 and stats["train"]["skipped"] == 1
    assert stats["train"]["files"][str(tmp_path / "train.json")]["duplicate_passages"] == 2
    assert stats["corpus"]["passages"] == 7 and stats["corpus"]["duplicates_removed"] == 2
    assert stats["corpus"]["gold_support_missing"] == 0
    assert stats["datasets"] == {
        "hp": {"train_questions": 2, "skipped": 1},
        "nq": {"dev_questions": 1, "skipped": 0},
    }
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_prepare_without_contexts_counts_missing_gold_paragraphs(tmp_path):
    cfg = parse_params(prepare_cfg(tmp_path, contexts_in_corpus=False)).prepare
    got = prepare(cfg)
    assert len(got.corpus) == 3
    assert got.stats["corpus"]["gold_support_missing"] == 4


def test_invalid_row_stops_the_stage_with_its_location(tmp_path):
    cfg = parse_params(prepare_cfg(tmp_path, skip_invalid=False)).prepare
    with pytest.raises(ValueError, match=r"train\.json: record 1 \(id 'b'\): no answer"):
        prepare(cfg)


def test_same_question_id_in_two_files_of_a_split_is_rejected(tmp_path):
    raw = prepare_cfg(tmp_path, skip_invalid=False)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([hotpot("a")]))
    raw["prepare"]["train"][0]["path"] = str(other)
    raw["prepare"]["train"].append({"path": str(other), "format": "hotpotqa", "dataset": "x"})
    with pytest.raises(ValueError, match=r"id 'a' was already read from .*other\.json"):
        prepare(parse_params(raw).prepare)


def test_help_says_what_the_stage_reads_and_writes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for word in ("params.prepare", "train.jsonl", "dev.jsonl", "corpus.jsonl", "stats.json"):
        assert word in text


def test_repeated_ids_across_files_are_skipped_and_counted_when_skipping(tmp_path):
    raw = prepare_cfg(tmp_path)
    raw["prepare"]["train"].append(dict(raw["prepare"]["train"][0], dataset="again"))
    got = prepare(parse_params(raw).prepare)
    assert [q.id for q in got.train] == ["a", "c"]
    assert got.stats["datasets"]["again"] == {"train_questions": 0, "skipped": 3}
    assert got.stats["train"]["skipped"] == 4


def test_a_file_marked_skip_repeats_drops_questions_an_earlier_file_gave(tmp_path):
    raw = prepare_cfg(tmp_path, skip_invalid=False)
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps([hotpot("a")]))
    second.write_text(json.dumps([hotpot("a"), hotpot("z")]))
    raw["prepare"]["train"] = [
        {"path": str(first), "format": "hotpotqa", "dataset": "hp"},
        {"path": str(second), "format": "hotpotqa", "dataset": "hp", "skip_repeats": True},
    ]
    got = prepare(parse_params(raw).prepare)
    assert [q.id for q in got.train] == ["a", "z"]
    assert got.stats["train"]["files"][str(second)]["repeats_dropped"] == 1


def test_the_bundled_params_keep_dev_and_train_questions_apart():
    params = parse_params(yaml.safe_load((RAW.parents[1] / "params.yaml").read_text()))
    got = prepare(params.prepare)
    assert not {q.id for q in got.train} & {q.id for q in got.dev}
    assert {q.dataset for q in got.dev} == {"hotpotqa", "2wiki", "musique"}
    assert len(got.dev) >= 500 and len(got.train) > 900


def test_an_empty_question_file_fails_prepare_naming_it(tmp_path):
    raw = prepare_cfg(tmp_path)
    (tmp_path / "dev.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"dev\.jsonl: no questions in prepare\.dev \(is it empty"):
        prepare(parse_params(raw).prepare)


def test_a_file_with_only_invalid_rows_fails_prepare_even_when_skipping_them(tmp_path):
    raw = prepare_cfg(tmp_path)
    (tmp_path / "train.json").write_text(json.dumps([hotpot("b", answer="")]))
    with pytest.raises(ValueError, match=r"train\.json: no questions .*all 1 rows are invalid"):
        prepare(parse_params(raw).prepare)


@pytest.mark.parametrize("split", ["train", "dev"])
def test_a_split_without_files_fails_prepare(tmp_path, split):
    raw = prepare_cfg(tmp_path)
    raw["prepare"][split] = []
    with pytest.raises(ValueError, match=rf"prepare\.{split} lists no question file"):
        prepare(parse_params(raw).prepare)


def test_an_empty_corpus_file_fails_prepare(tmp_path):
    raw = prepare_cfg(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    raw["prepare"]["corpus"] = [{"path": str(tmp_path / "empty.jsonl"), "format": "flashrag"}]
    with pytest.raises(ValueError, match=r"empty\.jsonl: no passages"):
        prepare(parse_params(raw).prepare)


def test_an_empty_corpus_fails_prepare(tmp_path):
    raw = prepare_cfg(tmp_path, contexts_in_corpus=False, corpus=[])
    with pytest.raises(ValueError, match="the corpus is empty"):
        prepare(parse_params(raw).prepare)


def test_the_stage_refuses_an_empty_split_before_writing_anything(tmp_path):
    raw = prepare_cfg(tmp_path)
    (tmp_path / "dev.jsonl").write_text("")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit, match="no questions"):
        main(["--params", str(params), "--out-dir", str(tmp_path / "prepared")])
    assert not (tmp_path / "prepared" / "train.jsonl").exists()


@pytest.mark.parametrize(
    ("name", "fmt", "content"),
    [
        ("q.jsonl", "flashrag", b'{"id": "1", "question": "Q?", "golden_answers": ["A"]}\n'),
        ("q.json", "hotpotqa", b"[\n" + json.dumps(hotpot("a")).encode() + b"\n"),
    ],
)
def test_a_question_file_that_is_not_utf8_names_the_file_and_line(tmp_path, name, fmt, content):
    path = tmp_path / name
    path.write_bytes(content + b'{"id": "2", "question": "Caf\xe9?", "golden_answers": ["A"]}\n')
    raw = prepare_cfg(tmp_path)
    raw["prepare"]["dev"] = [{"path": str(path), "format": fmt, "dataset": "x"}]
    line = content.count(b"\n") + 1
    with pytest.raises(ValueError, match=rf"{name}:{line}: not UTF-8 \(byte 0xe9 at column 29\)"):
        prepare(parse_params(raw).prepare)


def test_a_corpus_tsv_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_bytes(b"id\ttext\ttitle\n1\tfine\tA\n2\tna\xefve\tB\n")
    raw = prepare_cfg(tmp_path)
    raw["prepare"]["corpus"] = [{"path": str(path), "format": "dpr_tsv"}]
    with pytest.raises(ValueError, match=r"psgs\.tsv:3: not UTF-8 \(byte 0xef at column 5\)"):
        prepare(parse_params(raw).prepare)
