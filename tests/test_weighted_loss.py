import pytest
import torch
import torch.nn.functional as F
from chats import chat

from exsearch.config.training import TrainConfig
from exsearch.mstep.chat_encoding import IGNORE_INDEX, encode_conversation
from exsearch.mstep.training import make_trainer
from exsearch.mstep.weighted_loss import WeightedCollator, lean_weighted_loss


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
