"""The campaign report says what the campaign shows, in one unit, with the baselines beside it."""

from __future__ import annotations

import json

import pytest

from exsearch.report import conclusion_markdown, render_markdown
from exsearch.report.campaign import baseline_f1, plot_curve, seconds_rows
from exsearch.report.conclusion import dataset_phrase, verdict


def interval(diff, lo, hi, n=250):
    return {"diff": diff, "lo": lo, "hi": hi, "n": n}


def row(checkpoint, step, f1, support, searches):
    return {
        "checkpoint": checkpoint,
        "step": step,
        "n": 250,
        "em": f1 - 5,
        "f1": f1,
        "acc": f1 - 2,
        "recall": 50.0,
        "support_recall": support,
        "searches": searches,
    }


ROWS = [
    row("base", -1, 9.3, 0.0, 0.0),
    row("iter_0", 0, 22.5, 63.2, 1.264),
    row("iter_2", 2, 27.6, 64.4, 1.04),
]
COMPARISONS = {
    "base": {},
    "iter_0": {},
    "iter_2": {
        "vs_iter_0": {"f1": interval(5.1, 0.3, 10.1), "support_recall": interval(1.2, -0.2, 3.2)},
        "agent_vs_rag": {"f1": interval(3.0, -2.5, 8.7)},
        "agent_vs_iter_rag": {"f1": interval(-4.5, -8.0, -1.0)},
    },
}


@pytest.mark.parametrize(
    ("lo", "hi", "said"), [(0.3, 9.0, "above 0"), (-9.0, -0.3, "below 0"), (-0.1, 9.0, "covers 0")]
)
def test_a_difference_is_called_by_where_its_interval_lies(lo, hi, said):
    assert verdict(interval(1.0, lo, hi)) == said


def test_the_conclusion_answers_both_halves_of_the_claim_with_intervals():
    text = conclusion_markdown(ROWS, COMPARISONS, {"hotpotqa": {"n": 250}})
    assert "On 250 hotpotqa dev questions, one seed" in text
    assert "F1 27.6 against iter_0's 22.5: +5.1 [+0.3, +10.1], above 0." in text
    assert (
        "64.4% of the supporting passages against iter_0's 63.2% (+1.2 [-0.2, +3.2], covers 0)"
        in text
    )
    assert "1.04 searches per question against 1.26" in text
    assert "one-shot RAG +3.0 [-2.5, +8.7], covers 0" in text
    assert "iterative RAG (one follow-up query) -4.5 [-8.0, -1.0], below 0" in text
    assert "rag_sft" not in text  # not scored: not claimed


def test_nothing_is_concluded_without_an_em_iteration_beside_iter_0():
    assert conclusion_markdown(ROWS[:2], COMPARISONS, {}) == ""


def test_several_dev_sets_are_named_with_their_sizes():
    named = dataset_phrase({"hotpotqa": {"n": 250}, "2wiki": {"n": 150}, "musique": {"n": 120}})
    assert named == "250 hotpotqa, 150 2wiki and 120 musique dev questions"


def test_the_summary_opens_on_the_conclusion_and_shows_metrics_in_one_unit():
    text = render_markdown(ROWS, {}, {}, {"sample@iter_1": 90.0, "train@iter_1": 30.0}, COMPARISONS)
    assert text.index("## What this campaign shows") < text.index("## Dev metrics per checkpoint")
    assert "| iter_0 | 250 | 17.5 | 22.5 | 20.5 | 50.0 | 63.2 | 1.26 |" in text
    assert "| **total** | **2.0** |" in text


def test_the_stage_times_leave_out_stages_that_recorded_none():
    assert seconds_rows({"a": 60.0, "b": None})[-1] == {"stage": "**total**", "minutes": "**1.0**"}


def test_each_baselines_f1_is_read_where_it_was_scored(tmp_path):
    def metrics(path, doc):
        path.mkdir(parents=True)
        (path / "metrics.json").write_text(json.dumps(doc))

    rag = {"overall": {"f1": 24.4}}
    metrics(tmp_path / "iter_0", {"methods": {"agent": {"overall": {"f1": 22.5}}}})
    metrics(tmp_path / "iter_2", {"methods": {"rag": rag, "iter_rag": {"overall": {"f1": 27.4}}}})
    metrics(tmp_path / "rag_sft" / "iter_2", {"overall": {"f1": 29.0}})
    found = baseline_f1(tmp_path, ["iter_0", "iter_2"])
    assert found == {
        "rag": {"iter_2": 24.4},
        "iter_rag": {"iter_2": 27.4},
        "rag_sft": {"iter_2": 29.0},
    }
    plot_curve(ROWS, tmp_path / "curve.png", COMPARISONS, found)
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
