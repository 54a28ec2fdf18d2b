from exsearch import prompts
from exsearch.prompts import Step, parse_steps, parse_turn


def test_action_turn_round_trips_every_tag():
    text = prompts.action_turn(record="born 1901", think="need the spouse", query="X spouse")
    turn = parse_turn(text)
    assert (turn.record, turn.think, turn.query, turn.finish) == (
        "born 1901",
        "need the spouse",
        "X spouse",
        False,
    )
    assert turn.is_action


def test_finish_and_answer_round_trip():
    assert parse_turn(prompts.action_turn(record="r", think="t")).finish
    assert parse_turn(prompts.answer_turn("Chief of Protocol")).answer == "Chief of Protocol"


def test_unclosed_search_is_not_an_action():
    turn = parse_turn("<think>hmm</think><search>never closed and rambling")
    assert turn.query is None and not turn.is_action


def test_unclosed_answer_keeps_its_first_line():
    assert parse_turn("<answer>Paris\nbecause it is the capital").answer == "Paris"


def test_first_of_search_and_finish_wins():
    assert parse_turn("<finish><search>q</search>").query is None
    assert not parse_turn("<search>q</search><finish>").finish


def test_garbage_parses_to_nothing():
    turn = parse_turn("lorem ipsum </record> <thi")
    assert turn == prompts.Turn()


def test_parse_steps_rebuilds_the_trajectory():
    messages = [
        {"role": "system", "content": prompts.SYSTEM_PROMPT},
        {"role": "user", "content": prompts.question_turn("Who?")},
        {"role": "assistant", "content": prompts.action_turn(think="t1", query="q1")},
        {"role": "user", "content": prompts.documents_turn(["[1] Title: A Content: a"])},
        {"role": "assistant", "content": prompts.action_turn(record="r1", think="t2", query="q2")},
        {"role": "user", "content": prompts.documents_turn([])},
        {"role": "assistant", "content": prompts.action_turn(record="r2")},
        {"role": "user", "content": prompts.answer_request("Who?")},
        {"role": "assistant", "content": prompts.answer_turn("Ann")},
    ]
    steps, answer = parse_steps(messages)
    assert steps == [Step("q1", [], "r1", "t1"), Step("q2", [], "r2", "t2")]
    assert answer == "Ann"


def test_stop_strings_are_the_tags_that_hand_over_control():
    assert prompts.SEARCH_CLOSE in prompts.ACTION_STOPS
    assert prompts.FINISH in prompts.ACTION_STOPS
    assert prompts.ANSWER_STOPS == [prompts.ANSWER_CLOSE]
