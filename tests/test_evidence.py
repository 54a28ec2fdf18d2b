"""The weight–evidence statistics (exsearch.estep.evidence) on cases worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from exsearch.estep.evidence import auc, evidence_stats, spearman


def table(rows):
    return pd.DataFrame(rows, columns=["qid", "score", "support_recall", "correct"])


KNOWN = table(
    [
        # q1: the score ranks the samples exactly by what they found
        ("q1", -3.0, 0.0, False),
        ("q1", -2.0, 0.5, False),
        ("q1", -1.0, 1.0, True),
        # q2: exactly against it
        ("q2", -1.0, 0.0, False),
        ("q2", -2.0, 1.0, True),
        # q3: every sample found the same: nothing to choose between
        ("q3", -1.5, 0.5, False),
        ("q3", -0.5, 0.5, True),
    ]
)


def test_a_known_case():
    stats = evidence_stats(KNOWN)
    assert stats["n_trajectories"] == 7 and stats["n_questions"] == 3
    assert stats["share_differing"] == pytest.approx(2 / 3)
    # q1 +1, q2 -1; q3 has a constant recall and is left out
    assert stats["spearman_within"] == pytest.approx(0.0)
    assert stats["n_questions_within"] == 2
    # right answers' scores (-1, -2, -0.5) against wrong ones' (-3, -2, -1, -1.5): -1 beats
    # three and ties one, -2 beats one and ties one, -0.5 beats all four: 9 of 12 pairs
    assert stats["auc_correct"] == pytest.approx(9 / 12)


def test_the_pooled_correlation_is_spearmans():
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = scipy_stats.spearmanr(KNOWN["score"], KNOWN["support_recall"]).statistic
    assert evidence_stats(KNOWN)["spearman_pooled"] == pytest.approx(expected)


def test_the_auc_is_one_when_the_score_separates_right_from_wrong_and_a_half_when_it_cannot():
    right = pd.Series([True, True, False, False])
    assert auc(pd.Series([0.9, 0.8, 0.1, 0.2]), right) == 1.0
    assert auc(pd.Series([0.1, 0.2, 0.9, 0.8]), right) == 0.0
    assert auc(pd.Series([0.5, 0.5, 0.5, 0.5]), right) == 0.5
    assert math.isnan(auc(pd.Series([0.5, 0.6]), pd.Series([True, True])))


def test_a_constant_side_has_no_rank_correlation():
    assert math.isnan(spearman(pd.Series([1.0, 2.0]), pd.Series([0.5, 0.5])))


def test_unscored_samples_and_questions_without_support_are_left_out():
    rows = [*KNOWN.itertuples(index=False), ("q4", math.nan, 1.0, True), ("q5", -1.0, None, True)]
    stats = evidence_stats(table(rows))
    assert stats == evidence_stats(KNOWN)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"\['support_recall'\]"):
        evidence_stats(KNOWN.drop(columns="support_recall"))


def test_statistics_with_nothing_to_measure_are_none_not_nan():
    same = table([("q", -1.0, 0.5, True), ("q", -2.0, 0.5, True)])
    stats = evidence_stats(same)
    assert stats["spearman_within"] is None and stats["auc_correct"] is None
    assert stats["share_differing"] == 0.0
