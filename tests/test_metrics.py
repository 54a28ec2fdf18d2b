import tracemalloc

import numpy as np
import pytest

from bench.bootstrap import campaign_like
from exsearch.metrics import (
    MetricResult,
    cover_em,
    exact_match,
    f1_score,
    normalize_answer,
    paired_bootstrap,
    passage_has_answer,
    qa_scores,
    retrieval_precision_at_k,
    retrieval_recall_at_k,
    supporting_recall,
    title_key,
)
from exsearch.retrieval import Hit
from exsearch.schema import Passage


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("The Beatles", "beatles"),
        ("  A   tale of   an apple ", "tale of apple"),
        ("Hello, World!", "hello world"),
        ("“Quoted” – text…", "quoted text"),  # Unicode quotes, dash and ellipsis
        ("ＡＢＣ", "abc"),  # full-width letters (NFKC)
        ("Röntgen", "röntgen"),  # accents are kept
        ("theatre banana", "theatre banana"),  # articles only as whole words
        ("1,000", "1000"),
        ("U.S.", "us"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_decomposed_and_composed_accents_normalise_alike():
    assert normalize_answer("Ro\u0308ntgen") == normalize_answer("Röntgen")
    assert exact_match("Rontgen", ["Röntgen"]) == 0.0


def test_exact_match_ignores_case_articles_and_punctuation():
    assert exact_match("the eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("1,000", ["1000"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0


def test_multiple_aliases_take_the_best():
    golds = ["Barack Obama", "Obama", "Barack Hussein Obama II"]
    assert exact_match("obama", golds) == 1.0
    assert f1_score("president obama", golds) == pytest.approx(2 / 3)
    assert cover_em("It was Barack Obama.", ["Bush", "Barack Obama"]) == 1.0


def test_f1_partial_overlap():
    # prediction tokens: new york city; gold: new york -> p = 2/3, r = 1
    assert f1_score("New York City", ["New York"]) == pytest.approx(0.8)
    assert f1_score("Boston", ["New York"]) == 0.0


def test_f1_counts_repeated_tokens_once_per_occurrence():
    assert f1_score("new new new", ["new york"]) == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


@pytest.mark.parametrize(
    ("pred", "gold"),
    [("yes", "yes it is"), ("no", "no way"), ("noanswer", "answer"), ("yes", "no")],
)
def test_f1_yes_no_must_match_exactly(pred, gold):
    assert f1_score(pred, [gold]) == 0.0


def test_f1_yes_matches_yes():
    assert f1_score("Yes.", ["yes"]) == 1.0


def test_empty_prediction_scores_zero():
    assert exact_match("", ["Paris"]) == 0.0
    assert f1_score("", ["Paris"]) == 0.0
    assert cover_em("", ["Paris"]) == 0.0


def test_empty_gold_list_is_an_error():
    for fn in (exact_match, f1_score, cover_em):
        with pytest.raises(ValueError, match="no gold answers"):
            fn("Paris", [])


def test_a_bare_string_gold_is_one_alias():
    assert exact_match("paris", "Paris") == 1.0


def test_cover_em_matches_whole_words_by_default():
    assert cover_em("The answer is Paris, France", ["paris"]) == 1.0
    assert cover_em("I do not know", ["no"]) == 0.0
    assert cover_em("Russia", ["US"]) == 0.0
    assert cover_em("Russia", ["US"], whole_words=False) == 1.0


def test_cover_em_ignores_golds_that_normalise_to_nothing():
    assert cover_em("anything", ["The", "..."]) == 0.0


@pytest.mark.parametrize("gold", ["The", "?", "...", "a"])
@pytest.mark.parametrize("prediction", ["", "the", "?", "anything"])
def test_a_gold_that_normalises_to_nothing_matches_no_prediction(gold, prediction):
    assert normalize_answer(gold) == ""
    assert exact_match(prediction, [gold]) == 0.0
    assert f1_score(prediction, [gold]) == 0.0
    assert cover_em(prediction, [gold]) == 0.0


def test_a_question_with_an_empty_alias_is_scored_on_its_other_aliases():
    assert exact_match("", ["The", "Paris"]) == 0.0
    assert exact_match("paris", ["The", "Paris"]) == 1.0
    assert f1_score("the paris", ["?", "Paris"]) == 1.0


def test_qa_scores_returns_mean_and_per_sample():
    scores = qa_scores(["Paris", "a cat", "no"], [["Paris"], ["the cat", "kitty"], ["yes"]])
    assert scores["em"] == MetricResult(2 / 3, [1.0, 1.0, 0.0])
    assert scores["f1"].per_sample == [1.0, 1.0, 0.0]
    assert scores["acc"].value == pytest.approx(2 / 3)
    assert scores["acc"].n == 3


def test_a_metric_is_the_mean_of_its_defined_samples_over_any_subset():
    result = MetricResult.of([1.0, None, 0.0, 0.5])
    assert (result.value, result.n) == (0.5, 3)
    assert result.subset([0, 3]) == MetricResult(0.75, [1.0, 0.5])
    assert result.subset([1]).value is None
    assert MetricResult.of([]).value is None


def test_qa_scores_rejects_misaligned_or_empty_input():
    with pytest.raises(ValueError, match="2 items but 1"):
        qa_scores(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="empty input"):
        qa_scores([], [])
    with pytest.raises(ValueError, match=r"golds\[0\]"):
        qa_scores(["a"], [[]])


LIMA = Passage("1", "Lima", "Lima is the capital of Peru.")
PARIS = Passage("2", "Paris", "Paris is the capital of France.")
EVEREST = Passage("3", "Mount Everest", "The highest mountain, 8,849 m.")


def test_passage_has_answer_looks_at_title_and_text_on_word_boundaries():
    assert passage_has_answer(LIMA, ["lima"])
    assert passage_has_answer(EVEREST, ["8849 m"])
    assert passage_has_answer(EVEREST, ["mount everest"])
    assert not passage_has_answer(PARIS, ["Par"])
    assert passage_has_answer("the city of Lima", ["Lima"])


def test_retrieval_recall_and_precision_at_k():
    retrieved = [[LIMA, PARIS, EVEREST], [PARIS, EVEREST], []]
    golds = [["Peru"], ["Lima"], ["Lima"]]
    assert retrieval_recall_at_k(retrieved, golds, k=3).per_sample == [1.0, 0.0, 0.0]
    assert retrieval_recall_at_k([[PARIS, LIMA]], [["Peru"]], k=1).value == 0.0
    precision = retrieval_precision_at_k(retrieved, golds, k=2)
    assert precision.per_sample == [0.5, 0.0, 0.0]
    assert retrieval_precision_at_k([[LIMA]], [["Lima"]], k=5).value == 1.0


def test_without_k_retrieval_metrics_look_at_every_passage():
    retrieved = [[PARIS, EVEREST, LIMA], [PARIS], []]
    golds = [["Lima"], ["Lima"], ["Lima"]]
    assert retrieval_recall_at_k(retrieved, golds).per_sample == [1.0, 0.0, 0.0]
    assert retrieval_precision_at_k(retrieved, golds).per_sample == [1 / 3, 0.0, 0.0]
    assert retrieval_recall_at_k(retrieved, golds, k=2).per_sample == [0.0, 0.0, 0.0]


def test_retrieval_metrics_accept_hits():
    hits = [[Hit(PARIS, 2.0, 1), Hit(LIMA, 1.0, 2)]]
    assert retrieval_recall_at_k(hits, [["Lima"]], k=2).value == 1.0


def test_retrieval_metrics_reject_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        retrieval_recall_at_k([[LIMA]], [["Lima"]], k=0)


def test_supporting_recall():
    retrieved = [[LIMA, PARIS], [PARIS], [LIMA]]
    titles = [["Lima", "Mount Everest"], ["paris"], []]
    result = supporting_recall(retrieved, titles)
    assert result.per_sample == [0.5, 1.0, None]
    assert result.value == 0.75 and result.n == 2
    assert supporting_recall(retrieved, titles, k=1).per_sample == [0.5, 1.0, None]
    assert supporting_recall([["Lima"]], [["Lima"]]).value == 1.0
    assert supporting_recall([[LIMA]], [[]]).value is None


# --------------------------------------------------------------------------- bootstrap
def campaign_like_scores(n: int, seed: int = 0) -> tuple[list[float], list[float]]:
    """Two systems' F1 (0–1) on n questions, mixed as in the campaign's comparisons.

    ~72% score the same for both, ~8% gain and ~6% lose a whole answer (±100 points), ~14%
    differ partially: at n = 520 a 95% interval ~7 points wide, as in the study's.
    """
    a, b = campaign_like(n, seed)  # the benchmark's data, so both measure the same thing
    return a.tolist(), b.tolist()


def test_paired_bootstrap_of_identical_shifts_has_no_spread():
    got = paired_bootstrap([1.0] * 50, [0.0] * 50)
    assert (got.diff, got.lo, got.hi, got.n) == (100.0, 100.0, 100.0, 50)
    assert (got.method, got.n_boot) == ("point", 0)  # nothing resampled, and no NaN
    assert got.excludes_zero
    uneven = paired_bootstrap([0.3] * 20, [0.1] * 20)  # 100 · (0.3 − 0.1) is not exactly 20
    assert uneven.lo == uneven.diff == uneven.hi == pytest.approx(20.0)
    one = paired_bootstrap([0.75], [0.25])
    assert (one.lo, one.diff, one.hi, one.n, one.method) == (50.0, 50.0, 50.0, 1, "point")


def test_paired_bootstrap_matches_the_normal_approximation_on_a_known_case():
    # Half the questions gain one point of F1 (×100), half do not: mean 50, standard error
    # sqrt(0.25 / n) · 100, so the 95% interval is about 50 ± 1.96 · 100 · sqrt(0.25 / 400).
    a = [1.0, 0.0] * 200
    b = [0.0] * 400
    got = paired_bootstrap(a, b, n_boot=4000, seed=1)
    half_width = 1.96 * 100 * (0.25 / 400) ** 0.5  # 4.9 points
    assert got.diff == pytest.approx(50.0)
    assert got.lo == pytest.approx(50 - half_width, abs=0.8)
    assert got.hi == pytest.approx(50 + half_width, abs=0.8)


def test_pairing_removes_what_both_systems_share():
    # b is a plus noise common to both: a paired interval is tight, whatever the noise.
    noise = [(i * 37 % 101) / 101 for i in range(300)]
    a = [min(1.0, x + 0.05) for x in noise]
    got = paired_bootstrap(a, noise, seed=0)
    assert 0 < got.lo <= got.diff <= got.hi < 5.1


def test_paired_bootstrap_is_seeded_and_checks_its_input():
    a, b = [0.2, 0.9, 0.4, 0.7], [0.1, 0.3, 0.8, 0.2]
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    with pytest.raises(ValueError, match="align"):
        paired_bootstrap(a, b[:3])
    with pytest.raises(ValueError, match="nothing to compare"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="method"):
        paired_bootstrap(a, b, method="basic")


def test_bounds_move_less_than_a_third_of_a_point_across_seeds_at_the_campaigns_size():
    a, b = campaign_like_scores(520)
    runs = [paired_bootstrap(a, b, seed=seed) for seed in range(10)]
    los, his = [r.lo for r in runs], [r.hi for r in runs]
    assert max(los) - min(los) < 0.3
    assert max(his) - min(his) < 0.3
    assert 6 < runs[0].hi - runs[0].lo < 8  # the study's width: the spread is not a narrow case


def test_the_same_seed_gives_the_same_bounds_and_another_seed_others():
    a, b = campaign_like_scores(250)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7) != paired_bootstrap(a, b, seed=8)
    assert paired_bootstrap(np.array(a), np.array(b), seed=7) == paired_bootstrap(a, b, seed=7)


def test_the_interval_contains_the_mean_and_is_symmetric_for_symmetric_differences():
    # 60 questions gain a whole answer, 60 lose one, 40 tie: differences symmetric about 0.
    a = [1.0] * 60 + [0.0] * 60 + [0.5] * 40
    b = [0.0] * 60 + [1.0] * 60 + [0.5] * 40
    got = paired_bootstrap(a, b)
    assert got.lo < got.diff == 0.0 < got.hi
    assert got.lo + got.hi == pytest.approx(0.0, abs=0.3)


def test_bca_moves_the_interval_toward_the_long_tail_of_skewed_differences():
    # Gains only (10 whole answers, 20 partial, 90 ties): the mean's sampling distribution is
    # right-skewed, and BCa shifts the percentile interval of the same resamples upward.
    gains = np.random.default_rng(0).uniform(0.1, 0.6, 20).tolist()
    a, b = [1.0] * 10 + gains + [0.0] * 90, [0.0] * 120
    bca = paired_bootstrap(a, b, seed=0)
    percentile = paired_bootstrap(a, b, seed=0, method="percentile")
    assert (bca.method, bca.n_boot, percentile.method) == ("BCa", 30_000, "percentile")
    assert bca.lo < bca.diff < bca.hi
    assert bca.lo > percentile.lo and bca.hi > percentile.hi + 0.3


def test_where_bca_is_undefined_the_percentile_interval_of_the_same_resamples_stands_in():
    # Two resamples of four questions, both above the mean: BCa's bias correction is infinite.
    a, b = [1.0, 0.0, 0.0, 0.5], [0.0] * 4
    got = paired_bootstrap(a, b, n_boot=2, seed=3)
    percentile = paired_bootstrap(a, b, n_boot=2, seed=3, method="percentile")
    assert got.method == "percentile"
    assert (got.lo, got.hi) == (percentile.lo, percentile.hi)
    assert np.isfinite([got.lo, got.hi]).all()


def test_the_record_says_how_its_interval_was_computed():
    got = paired_bootstrap(*campaign_like_scores(50), n_boot=500).to_dict()
    assert got["method"] == "BCa" and got["n_boot"] == 500
    assert set(got) == {"diff", "lo", "hi", "n", "method", "n_boot"}


def test_memory_stays_bounded_for_thousands_of_questions():
    # Unbatched, BCa's jackknife alone would hold 5,000 × 4,999 indices and values (~400 MB).
    a, b = campaign_like_scores(5000)
    tracemalloc.start()
    try:
        paired_bootstrap(a, b, n_boot=500)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20


def test_supporting_titles_match_casefolded_and_whitespace_folded():
    assert title_key("  Straße   Kino ") == title_key("STRASSE kino")
    assert supporting_recall([[Passage("9", "the beatles", "x")]], [["The  Beatles"]]).value == 1.0
