"""The estimators behind every metric: unbiased pass@k, percentile-bootstrap confidence intervals over
problems, group disparity, and the paper's paradigm advice from correct-answer coverage.

Pure functions of per-problem numbers; metrics.py (the evaluate stage), improvement.py and verdict.py call
them. Confidence intervals resample problems with replacement (the problem is the unit of a benchmark);
the percentile interval of `n_boot` resamples, seeded, so a rerun gives the same interval (our choice of
method: Efron & Tibshirani's percentile bootstrap, 1,000 resamples by default).
"""

from __future__ import annotations

import numpy as np

CI_LEVEL = 0.95


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), in the numerically stable
    product form of Chen et al. 2021 (human-eval's `estimate_pass_at_k`). Requires k <= n.

    >>> pass_at_k(2, 1, 1)
    0.5
    >>> round(pass_at_k(10, 3, 5), 4)
    0.9167
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_per_problem(n, c, k: int) -> np.ndarray:
    """pass@k of each problem from its (n, c).

    >>> pass_at_k_per_problem([4, 4], [0, 2], 2).round(4).tolist()  # 1 - C(2,2)/C(4,2) = 5/6
    [0.0, 0.8333]
    """
    return np.array([pass_at_k(int(a), int(b), k) for a, b in zip(n, c)], dtype=float)


def powers_of_two(n_max: int, cap: int = 64) -> list[int]:
    """N = 1, 2, 4, ... up to min(cap, n_max): the accuracy@N grid of the paper's Figure 3 (N to 64).

    >>> powers_of_two(50), powers_of_two(4), powers_of_two(0)
    ([1, 2, 4, 8, 16, 32], [1, 2, 4], [])
    """
    out, n = [], 1
    while n <= min(cap, n_max):
        out.append(n)
        n *= 2
    return out


def resample(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) indices of problems drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(stats: np.ndarray) -> tuple[float | None, float | None]:
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return None, None
    lo, hi = np.quantile(stats, [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2])
    return float(lo), float(hi)


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0) -> tuple[float | None, float | None]:
    """95% percentile-bootstrap interval of the mean of per-problem values (NaNs dropped first);
    (None, None) with no values or n_boot = 0.

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    >>> lo, hi = bootstrap_ci([0.0, 1.0] * 200)
    >>> 0.44 < lo < 0.5 < hi < 0.56
    True
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v) or n_boot <= 0:
        return None, None
    return _interval(v[resample(len(v), n_boot, seed)].mean(axis=1))


def group_disparity(acc_low: float, acc_high: float) -> float | None:
    """(acc_L1 - acc_L5) / acc_L1 (paper §5.3, Fig. 5), for the easiest and hardest level; None when the
    easiest level's accuracy is 0 (the ratio is undefined).

    >>> group_disparity(0.8, 0.4)
    0.5
    >>> group_disparity(0.0, 0.0) is None
    True
    """
    return None if acc_low == 0 else float((acc_low - acc_high) / acc_low)


def _disparity_draws(correct: np.ndarray, level: np.ndarray, lo: int, hi: int, idx: np.ndarray) -> np.ndarray:
    c, lv = correct[idx], level[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        a_lo = (c * (lv == lo)).sum(axis=1) / (lv == lo).sum(axis=1)
        a_hi = (c * (lv == hi)).sum(axis=1) / (lv == hi).sum(axis=1)
        return np.where(a_lo > 0, (a_lo - a_hi) / a_lo, np.nan)


def disparity(correct, level, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Group disparity of per-problem greedy correctness between the lowest and the highest level present
    (levels 1 and 5 for MATH and arith; our choice for tasks with other levels), with its 95% interval.
    Resamples whose easiest level is missing or scores 0 are dropped. None without two levels.

    >>> d = disparity([1, 1, 0, 1, 0, 0], [1, 1, 1, 5, 5, 5], n_boot=0)
    >>> d["value"], d["levels"], d["accuracy"]
    (0.5, [1, 5], {1: 0.6666666666666666, 5: 0.3333333333333333})
    """
    c, lv = np.asarray(correct, dtype=float), np.asarray(level)
    levels = sorted({int(x) for x in lv if x == x and x is not None})
    if len(levels) < 2:
        return None
    lo, hi = levels[0], levels[-1]
    acc = {lev: float(c[lv == lev].mean()) for lev in (lo, hi)}
    out = {"value": group_disparity(acc[lo], acc[hi]), "levels": [lo, hi], "accuracy": acc,
           "ci": (None, None)}
    if n_boot > 0:
        out["ci"] = _interval(_disparity_draws(c, lv.astype(float), lo, hi, resample(len(c), n_boot, seed)))
    return out


def paired_change_ci(before, after, n_boot: int = 1000, seed: int = 0) -> tuple[float | None, float | None]:
    """95% interval of mean(after) - mean(before) for values of the same problems (resampled together).

    >>> paired_change_ci([0, 0, 1, 1], [1, 1, 1, 1], n_boot=200)
    (0.0, 1.0)
    """
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_change_ci needs values of the same problems, got {len(a)} and {len(b)}")
    return bootstrap_ci(b - a, n_boot, seed)


def unpaired_change_ci(before, after, n_boot: int = 1000, seed: int = 0) -> tuple[float | None, float | None]:
    """95% interval of mean(after) - mean(before) for two sets of problems resampled independently (a
    diversity mean of M1 and of M_t cover different problems: those with enough responses in the group).

    >>> [round(x, 6) for x in unpaired_change_ci([0.5, 0.5], [0.2, 0.2])]
    [-0.3, -0.3]
    """
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b) or n_boot <= 0:
        return None, None
    draws_a = a[resample(len(a), n_boot, seed)].mean(axis=1)
    draws_b = b[resample(len(b), n_boot, seed + 1)].mean(axis=1)
    return _interval(draws_b - draws_a)


def disparity_change(correct_before, correct_after, level, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """GD(after) - GD(before) on the same problems, with a paired 95% interval; None without two levels.

    >>> disparity_change([1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 5, 5], n_boot=0)["value"]
    0.5
    """
    before = disparity(correct_before, level, 0)
    after = disparity(correct_after, level, 0)
    if before is None or after is None or before["value"] is None or after["value"] is None:
        return None
    out = {"before": before["value"], "after": after["value"], "value": after["value"] - before["value"],
           "levels": before["levels"], "ci": (None, None)}
    if n_boot > 0:
        lo, hi = before["levels"]
        lv = np.asarray(level, dtype=float)
        idx = resample(len(lv), n_boot, seed)
        draws = (_disparity_draws(np.asarray(correct_after, dtype=float), lv, lo, hi, idx)
                 - _disparity_draws(np.asarray(correct_before, dtype=float), lv, lo, hi, idx))
        out["ci"] = _interval(draws)
    return out


def paradigm_advice(coverage_mean: float) -> str:
    """The paper's rule (paper §4.2, verbatim on the authors' project page): correct-answer coverage of M1 above
    0.5 favours iterative DPO or SFT-DPO, below 0.5 iterative SFT. At exactly 0.5 (the paper says neither)
    we advise SFT. `coverage_mean` is the paper's likely definition (mean per-sample correctness of M1 on
    the training prompts).

    >>> paradigm_advice(0.63), paradigm_advice(0.31)
    ('DPO or SFT-DPO', 'SFT')
    """
    if not 0 <= coverage_mean <= 1:
        raise ValueError(f"coverage_mean must be in [0, 1], got {coverage_mean}")
    return "DPO or SFT-DPO" if coverage_mean > 0.5 else "SFT"
