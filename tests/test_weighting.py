import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from exsearch import prompts as P
from exsearch.estep.weighting import (
    SCHEMES,
    compute_weights,
    score_table,
    support_found,
    weight_stats,
)
from exsearch.generation.hf import HFGenerator
from exsearch.prompts import gold_answer_tokens, with_gold_answer
from exsearch.schema import Step, Trajectory


def trajectory(qid="q1", sample=0, gold="John Smith", prediction="Paris", n_passages=2):
    question = "Who founded the city?"
    docs = P.documents_turn(
        [f"[{i}] Title: City Content: founded by John." for i in range(n_passages)]
    )
    return Trajectory(
        qid=qid,
        sample=sample,
        question=question,
        answers=[gold, "J. Smith"],
        prediction=prediction,
        messages=[
            {"role": "system", "content": P.SYSTEM_PROMPT},
            {"role": "user", "content": P.question_turn(question)},
            {"role": "assistant", "content": P.action_turn(think="who", query="city founder")},
            {"role": "user", "content": docs},
            {"role": "assistant", "content": P.action_turn(record="John", think="done")},
            {"role": "user", "content": P.answer_request(question)},
            {"role": "assistant", "content": P.answer_turn(prediction)},
        ],
    )


# ---- gold-answer scores ------------------------------------------------------------------------


def test_with_gold_answer_replaces_only_the_final_answer_turn():
    msgs = trajectory().messages
    out = with_gold_answer(msgs, " John Smith ")
    assert out[:-1] == msgs[:-1]
    assert out[-1] == {"role": "assistant", "content": "<answer>John Smith</answer>"}
    assert msgs[-1]["content"] == "<answer>Paris</answer>"  # the input is not modified


def test_with_gold_answer_needs_a_final_assistant_turn():
    msgs = trajectory().messages[:-1]
    with pytest.raises(ValueError, match="ends with user"):
        with_gold_answer(msgs, "x")


def test_scored_tokens_are_the_gold_answer_without_its_tags(tok):
    ids, positions = gold_answer_tokens(tok, trajectory(gold="John Smith"))
    assert tok.decode([ids[p] for p in positions]) == "John Smith"
    assert positions == list(range(positions[0], len(ids)))  # ids stop after the answer
    assert tok.decode(ids[: positions[0]]).endswith("<|im_start|>assistant\n<answer>")


def manual_score(model, tok, traj):
    """Unbatched, unpadded, full-logit reference for one trajectory."""
    gold = traj.answers[0]
    msgs = with_gold_answer(traj.messages, gold)
    prefix = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    prefix_ids = tok(prefix + "<answer>", add_special_tokens=False)["input_ids"]
    gold_ids = tok(gold, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix_ids + gold_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
    n = len(prefix_ids)
    return float(np.mean([logp[n + j - 1, t].item() for j, t in enumerate(gold_ids)]))


def scorer(model, tok, batch_size=2):
    """A generator with nothing cached: every token of each chat goes through the model."""
    return HFGenerator(model, tok, batch_size=batch_size)


@pytest.mark.parametrize("sliced", [True, False], ids=["logits_to_keep", "full_logits"])
def test_gold_answer_scores_match_a_manual_log_likelihood(model, tok, sliced):
    trajs = [
        trajectory("q1", 0, gold="John Smith", n_passages=1),
        trajectory("q1", 1, gold="John Smith", n_passages=4),
        trajectory("q2", 0, gold="the river 1820", n_passages=2),
    ]
    gen = scorer(model, tok)
    gen._keeps_logits = sliced
    scores = gen.gold_answer_scores(trajs, progress=False)
    expected = [manual_score(model, tok, t) for t in trajs]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert len(set(np.round(scores, 6))) == 3


class CountingModel(torch.nn.Module):
    """Wraps a model and counts the tokens each forward pass is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.fed = model, []
        self.generation_config = model.generation_config
        self.forward = self._forward  # so HFGenerator sees the wrapped model's arguments

    def _forward(self, **kwargs):
        self.fed.append(kwargs["input_ids"].numel())
        return self.model(**kwargs)


def test_scores_after_sampling_reuse_the_chats_keys_values_and_equal_fresh_scores(model, tok):
    trajs = [
        trajectory("q1", 0, gold="John Smith", n_passages=3),
        trajectory("q2", 0, gold="the river 1820", n_passages=1),
    ]
    fresh = scorer(model, tok).gold_answer_scores(trajs, progress=False)
    counting = CountingModel(model)
    gen = HFGenerator(counting, tok, batch_size=2)
    gen._keeps_logits, gen._cache_arg = True, scorer(model, tok)._cache_arg
    # What sampling leaves in the prefix cache: each chat up to its answer, as the agent sent it.
    gen.generate(
        [
            tok.apply_chat_template(t.messages[:-1], tokenize=False, add_generation_prompt=True)
            for t in trajs
        ],
        max_new_tokens=1,
    )
    counting.fed.clear()
    cached = gen.gold_answer_scores(trajs, progress=False)
    assert cached == pytest.approx(fresh, abs=1e-4)
    whole = sum(len(gold_answer_tokens(tok, t)[0]) for t in trajs)
    assert sum(counting.fed) < whole / 5  # only the answer turns went through the model


def test_scoring_runs_short_and_long_chats_apart_and_still_matches_the_manual_score(model, tok):
    trajs = [
        trajectory("q1", 0, gold="John Smith", n_passages=1),
        trajectory("q1", 1, gold="John Smith", n_passages=12),
        trajectory("q2", 0, gold="the river 1820", n_passages=1),
        trajectory("q2", 1, gold="the river 1820", n_passages=12),
    ]
    counting = CountingModel(model)
    gen = HFGenerator(counting, tok, batch_size=4)
    gen._keeps_logits, gen._cache_arg = True, scorer(model, tok)._cache_arg
    scores = gen.gold_answer_scores(trajs, progress=False)
    assert scores == pytest.approx([manual_score(model, tok, t) for t in trajs], abs=1e-4)
    lengths = [len(gold_answer_tokens(tok, t)[0]) for t in trajs]
    assert len(counting.fed) == 2  # the two short chats, then the two long ones
    assert sum(counting.fed) < len(trajs) * max(lengths)  # less padding than one batch


def test_empty_gold_answer_scores_nan_and_gets_no_weight(model, tok, caplog):
    scores = scorer(model, tok, 4).gold_answer_scores(
        [trajectory(gold=" "), trajectory(sample=1)], progress=False
    )
    assert math.isnan(scores[0]) and not math.isnan(scores[1])
    assert "empty gold answer" in caplog.text
    df = pd.DataFrame({"qid": ["q1", "q1"], "sample": [0, 1], "score": scores})
    assert compute_weights(df, "softmax")["weight"].tolist() == [0.0, 1.0]


def test_score_table_judges_the_sampled_answer_against_every_alias():
    trajs = [trajectory(sample=0, prediction="J. Smith"), trajectory(sample=1, prediction="Smith")]
    df = score_table(trajs, [-1.0, -2.0])
    assert df[["qid", "sample", "score"]].values.tolist() == [["q1", 0, -1.0], ["q1", 1, -2.0]]
    assert df["correct"].tolist() == [True, False]
    assert df["f1"].iloc[0] == 1.0 and 0 < df["f1"].iloc[1] < 1


def test_support_recall_counts_the_gold_titles_among_the_passages_the_chat_showed():
    found = replace(
        trajectory(), supporting_titles=["City", "River"], steps=[Step("city founder", ["p1"])]
    )
    # the record may quote a passage; only what the environment showed (user turns) counts
    quoted = P.action_turn(record="[1] Title: River Content: a river", think="done")
    assert support_found(found) == 0.5
    assert (
        support_found(
            replace(found, messages=[*found.messages, {"role": "assistant", "content": quoted}])
        )
        == 0.5
    )
    assert support_found(replace(found, supporting_titles=[])) is None
    row = score_table([found], [-1.0]).iloc[0]
    assert (row["support_recall"], row["searches"], row["distinct_queries"]) == (0.5, 1, 1)


# ---- schemes -----------------------------------------------------------------------------------


def table():
    return pd.DataFrame(
        {
            "qid": ["a", "a", "a", "b", "b"],
            "sample": [0, 1, 2, 0, 1],
            "score": [-0.5, -2.0, -1.0, -3.0, -3.0],
            "f1": [1.0, 0.0, 0.5, 0.2, 0.0],
            "correct": [True, False, False, False, False],
        }
    )


def test_softmax_weights_sum_to_one_per_question():
    w = compute_weights(table(), "softmax")
    assert w.groupby("qid")["weight"].sum().tolist() == pytest.approx([1.0, 1.0])
    assert (w["scheme"] == "softmax").all()


def test_softmax_ranks_trajectories_by_gold_answer_likelihood():
    w = compute_weights(table(), "softmax")["weight"].tolist()
    assert w[0] > w[2] > w[1]  # scores -0.5 > -1.0 > -2.0
    assert w[3] == w[4] == pytest.approx(0.5)
    s = np.array([-0.5, -2.0, -1.0])
    assert w[:3] == pytest.approx(list(np.exp(s) / np.exp(s).sum()))


def test_softmax_temperature_flattens_weights():
    sharp = compute_weights(table(), "softmax", tau=0.1)["weight"][:3]
    flat = compute_weights(table(), "softmax", tau=100.0)["weight"][:3]
    assert sharp.max() > 0.99
    assert flat.tolist() == pytest.approx([1 / 3] * 3, abs=0.01)


def test_softmax_is_stable_for_very_low_scores():
    df = pd.DataFrame({"qid": ["a", "a"], "sample": [0, 1], "score": [-1000.0, -1001.0]})
    w = compute_weights(df, "softmax")["weight"].tolist()
    assert w == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])


def test_exp_scheme_is_c_times_exp_score_unnormalised():
    w = compute_weights(table(), "exp", c=4.0)["weight"]
    assert w.tolist() == pytest.approx((4.0 * np.exp(table()["score"])).tolist())


def test_uniform_f1_and_filter_schemes():
    assert compute_weights(table(), "uniform")["weight"].tolist() == [1.0] * 5
    assert compute_weights(table(), "f1")["weight"].tolist() == [1.0, 0.0, 0.5, 0.2, 0.0]
    assert compute_weights(table(), "filter")["weight"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_input_table_is_not_modified():
    df = table()
    compute_weights(df, "softmax")
    assert "weight" not in df.columns


def test_unknown_scheme_and_missing_column_are_named():
    with pytest.raises(ValueError, match="'bogus'"):
        compute_weights(table(), "bogus")
    with pytest.raises(ValueError, match=r"\['f1'\]"):
        compute_weights(table().drop(columns="f1"), "f1")
    assert set(SCHEMES) == {"softmax", "exp", "uniform", "f1", "filter"}


# ---- statistics --------------------------------------------------------------------------------


def stats_of(weights_per_question):
    rows = [
        {"qid": q, "sample": k, "weight": w}
        for q, ws in weights_per_question.items()
        for k, w in enumerate(ws)
    ]
    return weight_stats(pd.DataFrame(rows))


def test_ess_is_k_for_uniform_and_one_for_one_hot_weights():
    assert stats_of({"a": [1.0] * 4})["ess_mean"] == pytest.approx(4.0)
    assert stats_of({"a": [0.25] * 4})["ess_mean"] == pytest.approx(4.0)
    assert stats_of({"a": [0.0, 1.0, 0.0, 0.0]})["ess_mean"] == pytest.approx(1.0)


def test_weight_stats_on_a_hand_example():
    s = stats_of({"a": [0.5, 0.5, 0.0, 0.0], "b": [1.0, 0.0, 0.0, 0.0], "c": [0.0] * 4})
    assert s["n_trajectories"] == 12 and s["n_questions"] == 3
    assert (s["weight_mean"], s["weight_min"], s["weight_max"]) == pytest.approx((2 / 12, 0, 1))
    assert s["entropy_mean"] == pytest.approx(math.log(2) / 2)  # c (all zero) left out
    assert s["ess_mean"] == pytest.approx((2 + 1 + 0) / 3)
    assert s["frac_zero_weight"] == pytest.approx(9 / 12)
    assert s["frac_questions_all_zero"] == pytest.approx(1 / 3)
