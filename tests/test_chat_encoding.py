import pytest
from chats import chat

from exsearch import prompts as P
from exsearch.mstep.chat_encoding import (
    IGNORE_INDEX,
    TRIM_MARK,
    ConversationTooLong,
    encode_conversation,
)

EOT = "<|im_end|>"


def trained_runs(tok, enc):
    """Decode each maximal run of trained tokens."""
    runs, cur = [], []
    for i, lab in zip(enc["input_ids"], enc["labels"], strict=True):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def assistant_texts(messages):
    return [m["content"] + EOT for m in messages if m["role"] == "assistant"]


def test_input_ids_equal_tokenising_the_rendered_chat(tok):
    msgs = chat()
    enc = encode_conversation(tok, msgs, 4096)
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert enc["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == tok.apply_chat_template(msgs, tokenize=True)["input_ids"]
    assert len(enc["labels"]) == len(enc["input_ids"])


def test_trained_tokens_spell_exactly_the_assistant_turns_and_their_end_of_turn(tok):
    msgs = chat()
    enc = encode_conversation(tok, msgs, 4096)
    assert trained_runs(tok, enc) == assistant_texts(msgs)
    expected = [
        t
        for text in assistant_texts(msgs)
        for t in tok(text, add_special_tokens=False)["input_ids"]
    ]
    assert [lab for lab in enc["labels"] if lab != IGNORE_INDEX] == expected


def test_retrieved_passages_and_prompts_carry_no_loss(tok):
    msgs = chat()
    enc = encode_conversation(tok, msgs, 4096)
    ids, labels = enc["input_ids"], enc["labels"]
    untrained = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX])
    for m in msgs:
        if m["role"] != "assistant":
            assert m["content"] in untrained
    assert "<|im_start|>assistant\n" in untrained  # role headers are not trained either


def test_changing_a_passage_does_not_change_the_trained_tokens(tok):
    a = encode_conversation(tok, chat(filler="founded in 1820"), 4096)
    b = encode_conversation(tok, chat(filler="built long ago near the river in 1820"), 4096)
    assert len(a["input_ids"]) != len(b["input_ids"])
    assert [x for x in a["labels"] if x != IGNORE_INDEX] == [
        x for x in b["labels"] if x != IGNORE_INDEX
    ]


def test_chat_within_max_length_is_not_trimmed(tok):
    msgs = chat()
    n = len(encode_conversation(tok, msgs, 4096)["input_ids"])
    assert (
        encode_conversation(tok, msgs, n)["input_ids"]
        == encode_conversation(tok, msgs, 4096)["input_ids"]
    )


def test_truncation_trims_passages_and_never_cuts_the_final_answer(tok):
    msgs = chat(n_passages=8)
    full = len(encode_conversation(tok, msgs, 4096)["input_ids"])
    limit = full - 150
    enc = encode_conversation(tok, msgs, limit)
    assert len(enc["input_ids"]) <= limit
    assert trained_runs(tok, enc) == assistant_texts(msgs)
    text = tok.decode(enc["input_ids"])
    assert text.endswith(P.answer_turn("John") + EOT + "\n")
    for kept in (P.SYSTEM_PROMPT, msgs[1]["content"], msgs[7]["content"]):
        assert kept in text
    assert text.count(TRIM_MARK + P.DOCS_CLOSE) >= 1


def test_chat_too_long_without_its_passages_is_rejected(tok):
    with pytest.raises(ConversationTooLong, match="max_length=64"):
        encode_conversation(tok, chat(), 64)
