import json
from pathlib import Path

import pytest
import yaml

from exsearch.config import parse_params
from exsearch.io import read_jsonl
from exsearch.schema import Passage, Question
from stages.prepare import main, prepare

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

    train = [Question.from_dict(r) for r in read_jsonl(out / "train.jsonl")]
    dev = [Question.from_dict(r) for r in read_jsonl(out / "dev.jsonl")]
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
