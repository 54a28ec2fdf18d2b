import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from exsearch import prompts as P
from exsearch.config_training import TrainConfig
from exsearch.training import (
    BASE_MODEL_FILE,
    IGNORE_INDEX,
    TRIM_MARK,
    ConversationTooLong,
    WeightedCollator,
    encode_conversation,
    lean_weighted_loss,
    load_for_training,
    make_trainer,
    train_weighted,
)

EOT = "<|im_end|>"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def chat(question="Who founded the city?", n_passages=3, answer="John", filler="founded in 1820"):
    docs = P.documents_turn(
        [
            f"[{i}] Title: City {i} Content: The city was {filler} by John."
            for i in range(n_passages)
        ]
    )
    return [
        {"role": "system", "content": P.SYSTEM_PROMPT},
        {"role": "user", "content": P.question_turn(question)},
        {"role": "assistant", "content": P.action_turn(think="need the founder", query="founder")},
        {"role": "user", "content": docs},
        {"role": "assistant", "content": P.action_turn(record="John", think="more", query="john")},
        {"role": "user", "content": docs},
        {"role": "assistant", "content": P.action_turn(record="John founded it", think="done")},
        {"role": "user", "content": P.answer_request(question)},
        {"role": "assistant", "content": P.answer_turn(answer)},
    ]


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


# ---- encoding ----------------------------------------------------------------------------------


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


# ---- loss --------------------------------------------------------------------------------------


def reference_loss(logits, labels, weights, denominator=None):
    """The weighted loss written out plainly from full logits: what the lean one must equal."""
    per_seq = []
    for row in range(labels.shape[0]):
        targets = labels[row, 1:]
        mask = targets != IGNORE_INDEX
        ce = F.cross_entropy(logits[row, :-1][mask].float(), targets[mask], reduction="sum")
        per_seq.append(ce / mask.sum().clamp(min=1))
    denom = labels.shape[0] if denominator is None else denominator
    return (weights * torch.stack(per_seq)).sum() / denom


def batch_of(tok, chats, weights, padding_free=False):
    collate = WeightedCollator(tok.pad_token_id, padding_free=padding_free)
    encs = [encode_conversation(tok, m, 4096) for m in chats]
    return collate([{**e, "weight": w} for e, w in zip(encs, weights, strict=True)]), encs


def trainer_for(model, tok, tmp_path, batch_size):
    data = [{**encode_conversation(tok, chat(), 4096), "weight": 1.0}]
    return make_trainer(model, tok, data, TrainConfig(batch_size=batch_size), str(tmp_path))


def three_chats():
    return [chat(), chat(question="Who built the river bridge?", n_passages=1), chat(answer="1820")]


def test_all_ones_weights_give_the_unweighted_loss(tok, model, tmp_path):
    chats = three_chats()
    batch, encs = batch_of(tok, chats, [1.0, 1.0, 1.0])
    assert batch["attention_mask"].eq(0).any()  # the batch really is padded
    loss = trainer_for(model, tok, tmp_path, 3).compute_loss(model, batch)
    with torch.no_grad():
        own = [
            model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss
            for e in encs
        ]
    torch.testing.assert_close(loss.detach(), torch.stack(own).mean())


@pytest.mark.parametrize("padding_free", [False, True])
def test_lean_loss_equals_the_plain_weighted_loss_in_float32(tok, model, padding_free):
    weights = [2.0, 0.5, 1.25]
    padded, encs = batch_of(tok, three_chats(), weights)
    logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    expected = reference_loss(logits, padded["labels"], padded["weight"])
    batch, _ = batch_of(tok, three_chats(), weights, padding_free=padding_free)
    assert batch["input_ids"].shape[0] == (1 if padding_free else 3)
    got = lean_weighted_loss(model, batch, denominator=3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_lean_loss_projects_only_positions_with_a_label(tok, model):
    batch, encs = batch_of(tok, three_chats(), [1.0, 1.0, 1.0])
    seen = {}
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.update(rows=o.shape[1]))
    try:
        lean_weighted_loss(model, batch, denominator=3)
    finally:
        hook.remove()
    trained = (batch["labels"][:, 1:] != IGNORE_INDEX).any(0).sum().item()
    assert seen["rows"] == trained < batch["input_ids"].shape[1] // 2


def test_weights_scale_each_sequence_mean_loss(tok, model):
    batch, _ = batch_of(tok, three_chats(), [2.0, 0.5, 0.0])
    alone = [
        lean_weighted_loss(model, batch_of(tok, [c], [1.0])[0], denominator=1)
        for c in three_chats()
    ]
    loss = lean_weighted_loss(model, batch, denominator=3)
    torch.testing.assert_close(loss, (2.0 * alone[0] + 0.5 * alone[1]) / 3, atol=1e-5, rtol=1e-5)


def test_zero_weight_sequence_gives_no_gradient(tok, model, tmp_path):
    """[A w=1, B w=0] and [A w=1] alone give the same gradient: both are divided by batch size 2."""
    trainer = trainer_for(model, tok, tmp_path, batch_size=2)
    a, b = chat(), chat(question="Who built the river bridge?", n_passages=1)

    def grads(chats, weights):
        model.zero_grad()
        batch, _ = batch_of(tok, chats, weights)
        trainer.compute_loss(model, batch).backward()
        return [p.grad.clone() for p in model.parameters()]

    both = grads([a, b], [1.0, 0.0])
    alone = grads([a], [1.0])
    model.zero_grad()
    assert any(g.abs().sum() > 0 for g in alone)
    for g_both, g_alone in zip(both, alone, strict=True):
        torch.testing.assert_close(g_both, g_alone)


def test_sequence_without_trained_tokens_adds_nothing(tok, model):
    a = encode_conversation(tok, chat(), 4096)
    silent = {"input_ids": a["input_ids"], "labels": [IGNORE_INDEX] * len(a["labels"])}
    collate = WeightedCollator(tok.pad_token_id)
    both = collate([{**a, "weight": 1.0}, {**silent, "weight": 5.0}])
    alone = collate([{**a, "weight": 1.0}])
    torch.testing.assert_close(
        lean_weighted_loss(model, both, denominator=2),
        lean_weighted_loss(model, alone, denominator=2),
        atol=1e-6,
        rtol=1e-6,
    )


# ---- training ----------------------------------------------------------------------------------


def examples(n=4, zero_weight=1):
    chats = [chat(), chat(question="Who built the bridge?", n_passages=1), chat(answer="1820")]
    weights = [1.0, 0.5, 2.0, 0.25, 1.5]
    out = [{"messages": chats[i % 3], "weight": weights[i % 5]} for i in range(n)]
    return out + [{"messages": chat(), "weight": 0.0}] * zero_weight


def cfg(**kw):
    base = dict(batch_size=2, max_length=1024, learning_rate=1e-3, warmup_ratio=0.0)
    return TrainConfig(**{**base, **kw})


def changed(before, after_dir):
    after = AutoModelForCausalLM.from_pretrained(after_dir, dtype=torch.float32).state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_train_weighted_with_lora_writes_a_merged_loadable_model(tiny_model_dir, model, tmp_path):
    out = tmp_path / "model"
    result = train_weighted(
        tiny_model_dir, examples(), out, cfg(lora=True), max_steps=2, progress=False
    )
    assert [h["step"] for h in result.loss_history] == [1, 2]
    assert all(h["loss"] > 0 for h in result.loss_history)
    assert (result.n_examples, result.n_zero_weight_dropped, result.steps) == (4, 1, 2)
    assert result.n_tokens_trained > 0
    assert not (out / "adapter_config.json").exists()
    assert changed(model.state_dict(), out)
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_train_weighted_full_finetune_writes_a_loadable_model(tiny_model_dir, model, tmp_path):
    out = tmp_path / "model"
    result = train_weighted(
        tiny_model_dir, examples(), out, cfg(lora=False), max_steps=2, progress=False
    )
    assert len(result.loss_history) == 2
    assert changed(model.state_dict(), out)


def test_unmerged_lora_saves_the_adapter_and_names_its_base(tiny_model_dir, tmp_path):
    out = tmp_path / "adapter"
    c = cfg(lora=True, merge_lora=False)
    train_weighted(tiny_model_dir, examples(), out, c, max_steps=1, progress=False)
    assert json.loads((out / BASE_MODEL_FILE).read_text()) == {"base_model": str(tiny_model_dir)}
    assert (out / "adapter_config.json").is_file()
    # The next iteration continues the adapter on the same base.
    out2 = tmp_path / "adapter2"
    train_weighted(out, examples(), out2, c, max_steps=1, progress=False)
    assert json.loads((out2 / BASE_MODEL_FILE).read_text()) == {"base_model": str(tiny_model_dir)}
    assert load_for_training(out2) is not None


def test_gradient_accumulation_matches_one_larger_batch(tiny_model_dir, tmp_path):
    """Batch 4 and batch 2 × 2 accumulation steps give the same loss and gradient norm."""
    data = examples(n=4, zero_weight=0)
    one = train_weighted(
        tiny_model_dir,
        data,
        tmp_path / "a",
        cfg(lora=False, batch_size=4),
        max_steps=1,
        progress=False,
    )
    acc = train_weighted(
        tiny_model_dir,
        data,
        tmp_path / "b",
        cfg(lora=False, batch_size=2, grad_accum=2),
        max_steps=1,
        progress=False,
    )
    for key in ("loss", "grad_norm"):
        assert acc.loss_history[0][key] == pytest.approx(one.loss_history[0][key], rel=1e-4)


def test_train_weighted_without_any_positive_weight_fails_clearly(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no example to train on"):
        train_weighted(
            tiny_model_dir, examples(n=0), tmp_path / "m", cfg(), max_steps=1, progress=False
        )


def test_negative_weight_is_an_error_naming_the_example(tiny_model_dir, tmp_path):
    bad = [{"messages": chat(), "weight": -1.0}]
    with pytest.raises(ValueError, match="example 0: weight"):
        train_weighted(tiny_model_dir, bad, tmp_path / "m", cfg(), max_steps=1, progress=False)


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_is_autocast_only_and_saves_float32_weights(tiny_model_dir, tmp_path, lora):
    out = tmp_path / "model"
    result = train_weighted(
        tiny_model_dir, examples(), out, cfg(lora=lora, bf16=True), max_steps=1, progress=False
    )
    assert all(h["loss"] > 0 for h in result.loss_history)
    saved = AutoModelForCausalLM.from_pretrained(out)
    assert next(saved.parameters()).dtype == torch.float32
