"""The GRPO learner: group-relative advantages, the clipped objective, and what one step does."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from chats import chat
from step_logs import StepLogs
from transformers import AutoModelForCausalLM

from exsearch.config import TrainConfig
from exsearch.config.params import ConfigError, parse_params
from exsearch.estep.advantages import advantage_stats, group_advantages, with_advantages
from exsearch.mstep import EStepOutput, learner
from exsearch.mstep.chat_encoding import IGNORE_INDEX, encode_conversation
from exsearch.mstep.grpo_loss import AdvantageCollator, grpo_loss, old_logps
from exsearch.schema import Trajectory

ROOT = Path(__file__).resolve().parents[1]


# --- advantages (the weigh stage) -------------------------------------------------------------


def test_advantages_are_rewards_centred_and_scaled_within_each_question():
    qid = pd.Series(["a", "a", "a", "a", "b", "b"])
    reward = pd.Series([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    adv = group_advantages(qid, reward, "grpo")
    # group a: mean 0.5, std (K - 1) √(1/3); group b: mean 0.5, std √(1/2)
    a = 0.5 / (3**-0.5 + 1e-4)
    b = 0.5 / (2**-0.5 + 1e-4)
    assert adv.tolist() == pytest.approx([a, -a, -a, a, b, -b])
    assert group_advantages(qid, reward, "dr_grpo").tolist() == [0.5, -0.5, -0.5, 0.5, 0.5, -0.5]


def test_a_question_whose_samples_all_earn_the_same_reward_gives_zero_advantage():
    qid = pd.Series(["a", "a", "a", "b", "c"])
    reward = pd.Series([0.0, 0.0, 0.0, 1.0, 0.3])
    for normalise in ("grpo", "dr_grpo"):
        assert group_advantages(qid, reward, normalise).tolist() == [0.0] * 5


def sampled(qid: str, k: int, answer: str, finish: str = "final") -> Trajectory:
    messages = chat(answer=answer)
    return Trajectory(
        qid=qid,
        sample=k,
        answers=["John"],
        messages=messages,
        prediction=answer,
        finish_reason=finish,
    )


def test_the_reward_is_em_or_f1_less_the_format_penalty_of_a_broken_sample():
    trajectories = [
        sampled("a", 0, "John"),
        sampled("a", 1, "John", finish="malformed"),
        sampled("a", 2, "Mary"),
    ]
    table = pd.DataFrame(
        {"qid": ["a"] * 3, "sample": [0, 1, 2], "correct": [True, True, False], "f1": [1.0, 1.0, 0]}
    )
    em = with_advantages(table, trajectories, "dr_grpo", kind="em", format_penalty=0.5)
    assert em["reward"].tolist() == [1.0, 0.5, 0.0]
    assert em["advantage"].tolist() == pytest.approx([0.5, 0.0, -0.5])
    stats = advantage_stats(em)
    assert stats["reward_mean"] == pytest.approx(0.5)
    assert stats["frac_groups_zero"] == 0.0
    with pytest.raises(ValueError, match="not these trajectories"):
        with_advantages(table, trajectories[::-1], "grpo")


def test_grpo_without_advantages_or_with_replay_is_refused_before_any_work():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["method"] = "grpo"
    with pytest.raises(ConfigError, match="weigh.advantage"):
        parse_params(raw)
    raw["weigh"]["advantage"] = "grpo"
    assert parse_params(raw).train.method == "grpo"
    raw["train"]["replay"] = 4
    with pytest.raises(ConfigError, match="train.replay"):
        parse_params(raw)


# --- the loss (tiny model, float32) ---------------------------------------------------------


def grpo_batch(tok, model, advantages, shift=0.0):
    """Two chats of different lengths, with π_old = the model's own log-probs + `shift` per
    token (so the ratio is exp(−shift): clipped where |shift| is large)."""
    chats = [chat(), chat(question="Who built the river bridge?", n_passages=1, answer="1820")]
    encs = [encode_conversation(tok, m, 4096) for m in chats]
    olds = old_logps(model, encs, tok.pad_token_id)
    features = [
        {**e, "advantage": a, "old_logp": [x + shift if x else 0.0 for x in o]}
        for e, a, o in zip(encs, advantages, olds, strict=True)
    ]
    return AdvantageCollator(tok.pad_token_id)(features)


def hand_loss(model, batch, epsilon, beta, denominator):
    """The module doc's L written out token by token from the full logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logprobs = logits.float().log_softmax(-1)
    total = torch.zeros(())
    for row in range(batch["input_ids"].shape[0]):
        a = float(batch["advantage"][row])
        terms = []
        for t in range(1, batch["labels"].shape[1]):
            label = int(batch["labels"][row, t])
            if label == IGNORE_INDEX:
                continue
            logp = logprobs[row, t - 1, label]
            old = batch["old_logp"][row, t]
            ratio = torch.exp(logp - old)
            clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
            kl = torch.exp(old - logp) - (old - logp) - 1
            terms.append(-torch.minimum(ratio * a, clipped * a) + beta * kl)
        total = total + torch.stack(terms).mean()
    return total / denominator


@pytest.mark.parametrize(("shift", "beta"), [(0.0, 0.0), (0.3, 0.0), (-0.3, 0.1)])
def test_the_loss_equals_a_hand_computation_in_float32(tok, model, shift, beta):
    batch = grpo_batch(tok, model, [1.5, -0.7], shift=shift)
    assert batch["attention_mask"].eq(0).any()  # padded: the second chat is shorter
    with torch.no_grad():
        got = grpo_loss(model, batch, epsilon=0.2, beta=beta, denominator=2).loss
        want = hand_loss(model, batch, 0.2, beta, 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_masked_tokens_get_no_gradient(tok, model):
    batch = grpo_batch(tok, model, [1.0, -1.0], shift=0.1)
    seen = {}

    def keep_logits(module, args, output):
        output.retain_grad()
        seen["logits"] = output

    hook = model.lm_head.register_forward_hook(keep_logits)
    try:
        grpo_loss(model, batch, epsilon=0.2, beta=0.0, denominator=2).loss.backward()
    finally:
        hook.remove()
        model.zero_grad()
    targets = batch["labels"][:, 1:]
    keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    labelled = (targets != IGNORE_INDEX)[:, keep]  # (rows, kept): what the logits were kept for
    grad = seen["logits"].grad.abs().sum(-1)  # (rows, kept)
    assert (grad[~labelled] == 0).all()  # prompts, passages and padding: nothing
    assert (grad[labelled] > 0).all()  # every token the model wrote: something
    assert (~labelled).any()  # the check had masked positions to look at


def sequence_logp(model, tok, messages):
    enc = encode_conversation(tok, messages, 4096)
    ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor(enc["labels"])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    mask = labels[1:] != IGNORE_INDEX
    return float(logprobs[mask].gather(-1, labels[1:][mask][:, None]).sum())


def test_one_step_raises_a_positive_advantage_sample_and_lowers_a_negative_one(
    tiny_model_dir, tok, model, tmp_path
):
    good, bad = sampled("a", 0, "John"), sampled("a", 1, "Paris in 1820")
    table = pd.DataFrame({"qid": ["a", "a"], "sample": [0, 1], "advantage": [1.0, -1.0]})
    cfg = TrainConfig(method="grpo", lora=False, batch_size=2, learning_rate=1e-4, warmup_ratio=0.0)
    fit, live = learner("grpo"), StepLogs()
    result = fit(
        tiny_model_dir, EStepOutput([good, bad], table), tmp_path / "m", cfg, callbacks=[live]
    )
    assert result.steps == 1 and result.n_examples == 2
    assert {"loss", "kl", "clip_ratio"} <= set(live.seen[0][1])  # passed on to the trainer
    assert {"kl", "clip_ratio", "ratio"} <= set(result.loss_history[0])
    assert result.loss_history[0]["ratio"] == pytest.approx(1.0)  # the first step is on-policy
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    for traj, sign in ((good, 1), (bad, -1)):
        before = sequence_logp(model, tok, traj.messages)
        assert sign * (sequence_logp(after, tok, traj.messages) - before) > 0


def test_an_iteration_with_nothing_to_learn_saves_the_model_unchanged(
    tiny_model_dir, model, tmp_path
):
    table = pd.DataFrame({"qid": ["a", "a"], "sample": [0, 1], "advantage": [0.0, 0.0]})
    trajectories = [sampled("a", 0, "John"), sampled("a", 1, "Mary")]
    cfg = TrainConfig(method="grpo", lora=True)
    result = learner("grpo")(tiny_model_dir, EStepOutput(trajectories, table), tmp_path / "m", cfg)
    assert (result.steps, result.n_zero_weight_dropped) == (0, 2)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).state_dict()
    assert all(torch.allclose(v, after[k]) for k, v in model.state_dict().items())


def test_a_table_without_advantages_is_refused_naming_the_setting(tiny_model_dir, tmp_path):
    table = pd.DataFrame({"qid": ["a"], "sample": [0], "weight": [1.0]})
    with pytest.raises(ValueError, match="weigh.advantage"):
        learner("grpo")(
            tiny_model_dir,
            EStepOutput([sampled("a", 0, "x")], table),
            tmp_path / "m",
            TrainConfig(),
        )
