import pytest

from exsearch.data.questions import read_questions, write_questions
from exsearch.schema import Question


def questions() -> list[Question]:
    support = [{"title": "Tower", "paragraph": "The Tower is in Town.", "sentences": []}]
    return [
        Question(
            id="b",
            question="Where is the Tower?",
            answers=["Town", "the Town"],
            dataset="hotpotqa",
            supporting_titles=["Tower"],
            extra={"type": "bridge", "support": support},
        ),
        Question(id="a", question="Café?", answers=["Oui"], dataset="nq"),
    ]


def test_read_questions_gives_back_what_was_written_in_file_order(tmp_path):
    path = tmp_path / "train.jsonl"
    assert write_questions(path, questions()) == 2
    assert read_questions(path) == questions()


def test_a_questions_file_is_one_json_object_per_line_blank_lines_ignored(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text(
        '{"id": 7, "question": "Q?", "answers": ["A"], "dataset": "d"}\n\n', encoding="utf-8"
    )
    assert read_questions(path) == [Question(id="7", question="Q?", answers=["A"], dataset="d")]


def test_an_empty_questions_file_gives_no_questions(tmp_path):
    (tmp_path / "dev.jsonl").write_text("")
    assert read_questions(tmp_path / "dev.jsonl") == []


def test_a_line_that_is_not_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    write_questions(path, questions())
    with path.open("a", encoding="utf-8") as f:
        f.write("{oops\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:3: not valid JSON"):
        read_questions(path)
