"""The records that cross module boundaries: a trajectory file's lines keep their keys, key order
and values through `Trajectory`, for the agent's records and the warm-up's alike."""

import json

import pytest

from exsearch.data.trajectories import read_trajectories, write_trajectories
from exsearch.schema import Step, TokenCounts, Trajectory

CHAT = [
    {"role": "system", "content": "You answer questions."},
    {"role": "user", "content": "Question: Who?"},
    {"role": "assistant", "content": "<think>who</think><search>who</search>"},
    {"role": "user", "content": "<documents>\n[1] Title: A Content: Ann.\n</documents>"},
    {"role": "assistant", "content": "<record>Ann</record><finish>"},
    {"role": "user", "content": "Give the answer."},
    {"role": "assistant", "content": "<answer>Ann</answer>"},
]
STEP = {"query": "who", "passage_ids": ["p1", "p2"], "record": "Ann", "think": "who"}

# What SearchAgent.run has always written, key for key.
AGENT_RECORD = {
    "qid": "q1",
    "sample": 2,
    "seed": 1000006,
    "temperature": 1.0,
    "method": "agent",
    "dataset": "hotpotqa",
    "question": "Who?",
    "answers": ["Ann", "Anne"],
    "supporting_titles": ["A"],
    "messages": CHAT,
    "steps": [STEP],
    "prediction": "Ann",
    "finish_reason": "final",
    "n_searches": 1,
    "tokens": {"generated": 17, "last_prompt": 230},
    "logprob": -3.0625000000000004,
}
# What the warm-up has always written: no decoding, so no temperature, tokens or log-prob.
WARMUP_RECORD = {
    "qid": "q2",
    "sample": 0,
    "seed": None,
    "method": "warmup",
    "dataset": "musique",
    "question": "Who?",
    "answers": ["Ann"],
    "supporting_titles": ["A"],
    "messages": CHAT,
    "steps": [STEP, {**STEP, "record": "nothing relevant", "passage_ids": []}],
    "prediction": "Ann",
    "finish_reason": "final",
    "n_searches": 2,
}


@pytest.mark.parametrize("record", [AGENT_RECORD, WARMUP_RECORD], ids=["agent", "warmup"])
def test_a_record_read_and_written_again_is_the_same_json_line(record):
    line = json.dumps(record, ensure_ascii=False)
    again = Trajectory.from_dict(json.loads(line)).to_dict()
    assert again == record
    assert json.dumps(again, ensure_ascii=False) == line  # key order included


def test_the_agent_record_is_typed_inside():
    t = Trajectory.from_dict(AGENT_RECORD)
    assert t.steps == [Step("who", ["p1", "p2"], "Ann", "who")]
    assert t.tokens == TokenCounts(generated=17, last_prompt=230)
    assert t.key == ("q1", 2) and t.n_searches == 1 and t.decoded


def test_a_record_without_a_log_prob_still_writes_the_key():
    t = Trajectory.from_dict({**AGENT_RECORD, "logprob": None})
    assert list(t.to_dict()) == list(AGENT_RECORD) and t.to_dict()["logprob"] is None


def test_the_number_of_searches_is_the_number_of_steps():
    t = Trajectory.from_dict(WARMUP_RECORD)
    assert t.n_searches == len(t.steps) == t.to_dict()["n_searches"] == 2


def test_a_teacher_record_needs_only_a_question_id_and_a_chat():
    t = Trajectory.from_dict({"qid": 7, "messages": CHAT})
    assert (t.qid, t.sample, t.messages, t.steps, t.prediction) == ("7", 0, CHAT, [], "")
    assert not t.decoded and t.method is None


def test_a_trajectory_file_round_trips_byte_for_byte(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in (AGENT_RECORD, WARMUP_RECORD)]
    path.write_text("".join(lines), encoding="utf-8")
    write_trajectories(tmp_path / "again.jsonl", read_trajectories(path))
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()


def test_a_record_that_is_no_trajectory_is_an_error_naming_file_and_record(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    path.write_text(json.dumps(AGENT_RECORD) + "\n" + json.dumps({"qid": "q3"}) + "\n")
    with pytest.raises(ValueError, match=r"trajectories.jsonl: record 2 .*'messages'"):
        read_trajectories(path)
