"""Answer and retrieval metrics (METHOD.md §4), SQuAD-style, max over gold aliases.

Per-answer functions (`exact_match`, `f1_score`, `cover_em`) score one prediction against its
gold aliases; the aggregate functions return a `MetricResult` holding the mean and the
per-sample list, so a report can show both the headline number and which questions moved.

`paired_bootstrap` puts an interval on the difference of two systems scored on the same
questions, the only honest way to read a gain of a few points on a few hundred questions.

Normalisation (`normalize_answer`): NFKC, lower-case, drop punctuation (ASCII and every Unicode
punctuation character), drop the articles a/an/the as whole words, fold whitespace. Accents are
kept ("Röntgen" ≠ "Rontgen"). Punctuation is deleted, not replaced by a space, as in the SQuAD
script: "1,000" and "1000" match, and so do "U.S." and "US".

Conventions where the SQuAD script is silent or lenient (`exsearch.evaluation.summary` reports these
functions' scores, so they hold for every reported number):

- A gold alias that normalises to nothing ("The", "?", "...") matches no prediction: it scores
  EM = F1 = Acc = 0, an empty prediction included (the SQuAD script would give an empty
  prediction EM = F1 = 1 against it). The question is scored on its other aliases, if any.
- Retrieval recall and precision count a trajectory that retrieved nothing (no search, or
  searches that returned nothing) as 0, not as missing: a searcher that never searches is not
  excused from retrieval. Only a method that never retrieves by design (`direct`) has no
  retrieval scores. Supporting-passage recall follows the same rule for questions that have
  supporting titles.
- Titles (supporting-passage recall) are compared after NFKC, case folding and whitespace
  folding (`title_key`).
"""

from __future__ import annotations

import re
import string
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import numpy as np

from exsearch.schema import Passage

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# HotpotQA's official script gives F1 = 0 when one side is one of these and the other differs.
_SPECIAL = frozenset({"yes", "no", "noanswer"})


@dataclass(frozen=True)
class MetricResult:
    """A metric over a set of questions: `value` is the mean of the defined per-sample scores.

    `per_sample` is aligned with the input; an entry is None where the metric is undefined for
    that question (e.g. supporting recall for a dataset without supporting titles), and `value`
    is None when no entry is defined.
    """

    value: float | None
    per_sample: list[float | None]

    @classmethod
    def of(cls, per_sample: list[float | None]) -> MetricResult:
        """The mean of the defined entries of `per_sample` (None if none is defined)."""
        vals = [x for x in per_sample if x is not None]
        return cls(fmean(vals) if vals else None, per_sample)

    @property
    def n(self) -> int:
        """How many questions the mean is over."""
        return sum(x is not None for x in self.per_sample)

    def subset(self, indices: Sequence[int]) -> MetricResult:
        """The same metric over the samples at `indices` only (e.g. one dataset's questions)."""
        return MetricResult.of([self.per_sample[i] for i in indices])


class _DropPunctuation(dict):
    """str.translate table deleting punctuation, filled lazily one code point at a time."""

    def __missing__(self, code: int) -> int | None:
        ch = chr(code)
        keep = ch not in _ASCII_PUNCT and not unicodedata.category(ch).startswith("P")
        self[code] = code if keep else None
        return self[code]


_DROP_PUNCT = _DropPunctuation()


def normalize_answer(s: str) -> str:
    """SQuAD normalisation made Unicode-aware (see the module docstring)."""
    s = unicodedata.normalize("NFKC", s).lower().translate(_DROP_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(golds: Sequence[str] | str) -> list[str]:
    # A bare string would otherwise be iterated character by character.
    if isinstance(golds, str):
        golds = [golds]
    golds = list(golds)
    if not golds:
        raise ValueError("no gold answers given: every question needs at least one gold alias")
    return golds


def exact_match(prediction: str, golds: Sequence[str] | str) -> float:
    """1.0 if the normalised prediction equals a normalised gold alias, else 0.0.

    An alias that normalises to nothing matches nothing (see the module docstring).
    """
    pred = normalize_answer(prediction)
    return float(any(gold and pred == gold for gold in map(normalize_answer, _golds(golds))))


def _f1(pred: str, gold: str) -> float:
    if (pred in _SPECIAL or gold in _SPECIAL) and pred != gold:
        return 0.0
    p, g = pred.split(), gold.split()
    if not p or not g:
        # An empty gold matches nothing (module docstring); an empty prediction has no overlap.
        return 0.0
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: Sequence[str] | str) -> float:
    """Token F1 of normalised strings, max over aliases; yes/no/noanswer must match exactly.

    An alias that normalises to nothing scores 0 (see the module docstring).
    """
    pred = normalize_answer(prediction)
    return max(_f1(pred, normalize_answer(g)) for g in _golds(golds))


def _contains(haystack_norm: str, needle_norm: str, whole_words: bool) -> bool:
    if not needle_norm:
        return False  # an empty gold (e.g. "The") would be found in everything
    if whole_words:
        return f" {needle_norm} " in f" {haystack_norm} "
    return needle_norm in haystack_norm


def cover_em(prediction: str, golds: Sequence[str] | str, *, whole_words: bool = True) -> float:
    """Acc (cover-EM): 1.0 if a normalised gold alias occurs in the normalised prediction.

    With `whole_words` (the default) the gold must sit on word boundaries, so gold "no" is not
    found in "not known" nor "us" in "russia"; `whole_words=False` is the plain substring test
    of FlashRAG's `acc`, which counts those. A gold that normalises to "" never matches.
    """
    pred = normalize_answer(prediction)
    return float(any(_contains(pred, normalize_answer(g), whole_words) for g in _golds(golds)))


def _check_lengths(a: Sequence, b: Sequence, what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} items but {len(b)} gold answer lists")
    if not a:
        raise ValueError(f"{what}: nothing to score (empty input)")


def qa_scores(
    predictions: Sequence[str], golds: Sequence[Sequence[str]]
) -> dict[str, MetricResult]:
    """EM, F1 and Acc over aligned predictions and gold alias lists: {"em", "f1", "acc"}."""
    _check_lengths(predictions, golds, "predictions")
    for i, g in enumerate(golds):
        if isinstance(g, str) or not g:
            raise ValueError(f"golds[{i}]: expected a non-empty list of aliases, got {g!r}")
    return {
        "em": MetricResult.of([exact_match(p, g) for p, g in zip(predictions, golds, strict=True)]),
        "f1": MetricResult.of([f1_score(p, g) for p, g in zip(predictions, golds, strict=True)]),
        "acc": MetricResult.of([cover_em(p, g) for p, g in zip(predictions, golds, strict=True)]),
    }


# --------------------------------------------------------------------------- retrieval
def _as_passage_text(item: Any) -> tuple[str, str]:
    """(title, text) of a Passage, a search hit (anything with `.passage`), or a bare text."""
    item = getattr(item, "passage", item)
    if isinstance(item, Passage):
        return item.title, item.text
    if isinstance(item, str):
        return "", item
    raise TypeError(f"expected a Passage, a hit or a str, got {type(item).__name__}")


def passage_has_answer(item: Passage | str, golds: Sequence[str] | str) -> bool:
    """Tell whether a passage (title + text) contains a normalised gold on word boundaries."""
    title, text = _as_passage_text(item)
    norm = normalize_answer(f"{title} {text}")
    return any(_contains(norm, normalize_answer(g), True) for g in _golds(golds))


def _relevance(
    retrieved: Sequence[Sequence[Any]], golds: Sequence[Sequence[str]], k: int | None
) -> list[list[bool]]:
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 (or None for all), got {k}")
    _check_lengths(retrieved, golds, "retrieved")
    return [
        [passage_has_answer(p, g) for p in (list(ps) if k is None else list(ps)[:k])]
        for ps, g in zip(retrieved, golds, strict=True)
    ]


def retrieval_recall_at_k(
    retrieved: Sequence[Sequence[Any]], golds: Sequence[Sequence[str]], k: int | None = None
) -> MetricResult:
    """Per question 1.0 if any of its top-k passages contains a gold answer (0.0 if none came).

    `k` None takes every passage: what a trajectory retrieved over all its searches.
    """
    return MetricResult.of([float(any(r)) for r in _relevance(retrieved, golds, k)])


def retrieval_precision_at_k(
    retrieved: Sequence[Sequence[Any]], golds: Sequence[Sequence[str]], k: int | None = None
) -> MetricResult:
    """Per question the share of its top-k passages that contain a gold answer.

    The denominator is the number of passages actually returned (at most k; all of them for
    `k` None), so a retriever that returns fewer than k passages is not charged for the missing
    ones; none returned scores 0.0.
    """
    return MetricResult.of([sum(r) / len(r) if r else 0.0 for r in _relevance(retrieved, golds, k)])


def title_key(title: str) -> str:
    """What makes two titles the same: NFKC, case folding, whitespace folding."""
    return " ".join(unicodedata.normalize("NFKC", title).casefold().split())


def supporting_recall(
    retrieved: Sequence[Sequence[Any]],
    supporting_titles: Sequence[Sequence[str]],
    k: int | None = None,
) -> MetricResult:
    """Per question the share of its gold supporting titles among the retrieved passages' titles.

    `retrieved` holds Passages, hits or bare titles (str); titles are compared after NFKC,
    case folding and whitespace folding. Questions without supporting titles are None.
    `k` limits each list to its first k items (None: all).
    """
    if len(retrieved) != len(supporting_titles):
        raise ValueError(
            f"retrieved: {len(retrieved)} items but {len(supporting_titles)} supporting-title lists"
        )
    out: list[float | None] = []
    for ps, gold in zip(retrieved, supporting_titles, strict=True):
        wanted = {title_key(t) for t in gold}
        if not wanted:
            out.append(None)
            continue
        items = list(ps) if k is None else list(ps)[:k]
        got = {title_key(p if isinstance(p, str) else _as_passage_text(p)[0]) for p in items}
        out.append(len(wanted & got) / len(wanted))
    return MetricResult.of(out)


# --------------------------------------------------------------------------- uncertainty
# 30,000, not the 10,000 that usually suffices: at n = 250 the BCa bounds still moved up to 0.37
# points across 10 seeds at 10,000 (paired_bootstrap's docstring has the figures).
BOOTSTRAP_RESAMPLES = 30_000
# Resampled scores held at once (resamples × questions): scipy's resampling and BCa's jackknife
# (n × (n − 1) values, 800 MB at n = 10,000 unbatched) go in batches of this many, so a call
# peaks at ~64 MiB whatever n is.
_BOOTSTRAP_CELLS = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A paired difference of means, in percentage points, with its bootstrap interval.

    `diff` = mean(a) − mean(b) over the `n` questions both were scored on; [`lo`, `hi`] is the
    interval at `level` from `n_boot` resamples of the questions (with replacement). `method`
    says how the bounds were read off the resamples: "BCa", "percentile" (where BCa is
    undefined) or "point" (every question differs by the same amount: no resampling, n_boot 0).
    """

    diff: float
    lo: float
    hi: float
    n: int
    level: float = 0.95
    method: str = "BCa"
    n_boot: int = BOOTSTRAP_RESAMPLES

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below 0 (a difference the data can tell)."""
        return self.lo > 0 or self.hi < 0

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "diff": self.diff,
            "lo": self.lo,
            "hi": self.hi,
            "n": self.n,
            "method": self.method,
            "n_boot": self.n_boot,
        }

    def __str__(self) -> str:
        return f"{self.diff:+.1f} [{self.lo:+.1f}, {self.hi:+.1f}] (n={self.n})"


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    method: str = "BCa",
) -> Interval:
    """Paired bootstrap of mean(a) − mean(b), scores in [0, 1] reported ×100 (points).

    `a[i]` and `b[i]` are the scores of two systems on question i. Resampling whole questions
    keeps the pairing, so the interval reflects how much the difference depends on which
    questions were drawn (Efron & Tibshirani 1993, ch. 14 and 16; Koehn 2004 for its use in
    NLP). It runs `scipy.stats.bootstrap` as a one-sample bootstrap of the per-question
    differences d = a − b: for a mean, mean(a*) − mean(b*) over resampled pairs is mean(d*),
    draw for draw, and the jackknife behind BCa's acceleration is the same too, so this is the
    paired bootstrap at half the indexing. BCa (bias-corrected and accelerated) by default:
    per-question differences are lumpy (mostly 0, some ±100), and BCa corrects the percentile
    interval's coverage for the skew that leaves. Where BCa is undefined (with a handful of
    resamples, all on one side of the mean) the percentile interval of the same resamples is
    returned; when every difference is the same, the point interval (d, d, d): never NaN.

    Seeded: the same inputs and seed give the same interval, bit for bit on one machine. The
    Monte-Carlo error of the bounds (`python bench/bootstrap.py`: standard deviation of `lo` and
    `hi` over 60 seeds on campaign-like differences, ~72% zeros, ~14% ±100, ~14% partial F1) is
    0.03–0.04 points at n = 520 and 0.04–0.065 at n = 250 with 30,000 resamples, so a bound
    moves < 0.3 points between seeds; at 10,000 it is 0.05–0.07 and 0.06–0.10, and the
    percentile interval of 2,000 resamples used before #25 moved 0.10–0.18.

    Raises:
        ValueError: the lists differ in length or are empty, `level` is not in (0, 1) or
            `method` is neither "BCa" nor "percentile".
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores must align: {len(a)} against {len(b)}")
    if len(a) == 0:
        raise ValueError("nothing to compare: no question was scored by both")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if method not in ("BCa", "percentile"):
        raise ValueError(f'method must be "BCa" or "percentile", got {method!r}')
    d = 100.0 * (np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
    if np.all(d == d[0]):  # no spread to resample; BCa would divide 0 by 0
        same = float(d[0])
        return Interval(same, same, same, len(d), level, "point", 0)
    # Imported here: scipy.stats takes ~1 s to import, and most users of this module never
    # bootstrap.
    from scipy.stats import DegenerateDataWarning, bootstrap

    settings = dict(
        batch=max(1, _BOOTSTRAP_CELLS // len(d)), confidence_level=level, vectorized=True
    )
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", DegenerateDataWarning)  # a NaN bound is handled below
        res = bootstrap(
            (d,),
            np.mean,
            n_resamples=n_boot,
            method=method,
            rng=np.random.default_rng(seed),
            **settings,
        )
    lo, hi = res.confidence_interval
    if not (np.isfinite(lo) and np.isfinite(hi)):  # BCa undefined: percentile, same resamples
        method = "percentile"
        again = bootstrap(
            (d,), np.mean, n_resamples=0, bootstrap_result=res, method=method, **settings
        )
        lo, hi = again.confidence_interval
    return Interval(float(d.mean()), float(lo), float(hi), len(d), level, method, n_boot)
