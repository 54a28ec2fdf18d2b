"""Paired bootstrap: cost per call and Monte-Carlo spread of the bounds, new against old.

    python bench/bootstrap.py [--seeds 60] [--datasets 3]

New: `exsearch.metrics.paired_bootstrap` as the report calls it (BCa, 30,000 resamples through
`scipy.stats.bootstrap`), and the same at 10,000. Old (the baseline): the percentile interval
of 2,000 resamples that the project used before issue #25, a copy of that code (`old_interval`).
The data are campaign-like per-question scores, the mix seen on the campaign's F1 differences:
~72% of questions score the same for both systems, ~8% gain and ~6% lose a whole answer
(±100 points), ~14% differ partially; n = 250 (the README campaign) and 520 (the study).

Spread: the standard deviation of `lo` and `hi` over `--seeds` bootstrap seeds, and the widest
range (max − min) of either bound over any 10 consecutive seeds, which `tests/test_metrics.py`
holds under 0.3 points on this module's `campaign_like` data. Time: best and median of 5
calls, one thread.

The last line is `new_vs_old_seconds: <ratio>` at n = 520.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from exsearch.metrics import paired_bootstrap


def campaign_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0, 1] of two systems on n questions, mixed as in the module docstring."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=n, p=[0.72, 0.08, 0.06, 0.14])
    a, b = np.zeros(n), np.zeros(n)
    a[kind == 1] = 1.0
    b[kind == 2] = 1.0
    part = kind == 3
    a[part], b[part] = rng.uniform(0, 1, part.sum()), rng.uniform(0, 1, part.sum())
    return a, b


def old_interval(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[float, float]:
    """The pre-#25 `paired_bootstrap`: percentile interval of 2,000 resamples, in points."""
    d = 100.0 * (a - b)
    rng = np.random.default_rng(seed)
    means = np.empty(2000)
    for start in range(0, 2000, 256):
        stop = min(2000, start + 256)
        means[start:stop] = d[rng.integers(0, len(d), (stop - start, len(d)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _bounds(interval) -> tuple[float, float]:
    return interval.lo, interval.hi


CONTENDERS = {
    "old: percentile, 2,000": old_interval,
    "BCa, 10,000": lambda a, b, seed: _bounds(paired_bootstrap(a, b, seed=seed, n_boot=10_000)),
    "new: BCa, 30,000": lambda a, b, seed: _bounds(paired_bootstrap(a, b, seed=seed)),
}


def seconds(fn, a: np.ndarray, b: np.ndarray, repeats: int = 5) -> tuple[float, float]:
    """Best and median wall time of `repeats` calls (after one untimed warm-up call)."""
    fn(a, b, 0)
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        fn(a, b, seed)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=60, help="bootstrap seeds per data set")
    parser.add_argument("--datasets", type=int, default=3, help="campaign-like data sets per n")
    args = parser.parse_args()

    print("| n | data | contender | sd lo | sd hi | widest 10-seed range |")
    print("|---:|---:|---|---:|---:|---:|")
    for n in (250, 520):
        for data_seed in range(args.datasets):
            a, b = campaign_like(n, data_seed)
            for name, fn in CONTENDERS.items():
                lo, hi = np.array([fn(a, b, s) for s in range(args.seeds)]).T
                widest = max(
                    max(np.ptp(lo[k : k + 10]), np.ptp(hi[k : k + 10]))
                    for k in range(0, args.seeds - 9, 10)
                )
                sd_lo, sd_hi = lo.std(ddof=1), hi.std(ddof=1)
                print(f"| {n} | {data_seed} | {name} | {sd_lo:.3f} | {sd_hi:.3f} | {widest:.2f} |")

    print("\n| n | contender | best s | median s |")
    print("|---:|---|---:|---:|")
    timed: dict[tuple[int, str], float] = {}
    for n in (520, 5000):
        a, b = campaign_like(n, 0)
        for name, fn in CONTENDERS.items():
            best, median = seconds(fn, a, b)
            timed[n, name] = best
            print(f"| {n} | {name} | {best:.3f} | {median:.3f} |")
    ratio = timed[520, "new: BCa, 30,000"] / timed[520, "old: percentile, 2,000"]
    print(f"new_vs_old_seconds: {ratio:.2f}")


if __name__ == "__main__":
    main()
