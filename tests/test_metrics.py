"""Metrics against brute force and hand-made tables."""

import itertools
import math

import pandas as pd
import pytest

from selfimprove import metrics


@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_equals_brute_force_over_k_subsets(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert math.isclose(metrics.pass_at_k(n, c, k), brute, abs_tol=1e-12), (n, c, k)


@pytest.mark.parametrize("args", [(4, 5, 1), (4, 2, 5), (4, 2, 0), (4, -1, 1)])
def test_pass_at_k_rejects_impossible_arguments(args):
    with pytest.raises(ValueError):
        metrics.pass_at_k(*args)


def _table():
    rows = []
    # p1 (level 1): greedy right, 3 of 4 samples right; p2 (level 2): greedy wrong, 1 of 4; p3 (level 2): 0 of 4
    for pid, level, greedy, sampled in (("p1", 1, True, [1, 1, 1, 0]), ("p2", 2, False, [0, 1, 0, 0]),
                                        ("p3", 2, False, [0, 0, 0, 0])):
        rows.append(dict(problem_id=pid, level=level, decoding="greedy", sample_idx=0, correct=greedy,
                         status="correct" if greedy else "incorrect", response="#### 1", finish_reason="stop",
                         task="arith"))
        for i, ok in enumerate(sampled):
            rows.append(dict(problem_id=pid, level=level, decoding="sample", sample_idx=i, correct=bool(ok),
                             status="correct" if ok else ("no_answer" if pid == "p3" else "incorrect"),
                             response="1 + 1 = 2\n#### 2" if ok else "1 + 1 = 3", finish_reason="stop",
                             task="arith"))
    return pd.DataFrame(rows)


def test_split_metrics_by_hand():
    m = metrics.split_metrics(_table(), ks=[1, 2, 4])
    assert m["pass@1"] == pytest.approx(1 / 3)
    assert m["pass@1_by_level"] == {1: 1.0, 2: 0.0}
    assert m["pass@k"][1] == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)
    assert m["pass@k"][2] == pytest.approx((1 + 0.5 + 0) / 3)  # p2: 1 - C(3,2)/C(4,2) = 0.5
    assert m["pass@k"][4] == pytest.approx(2 / 3)
    assert m["status_rates"] == pytest.approx({"correct": 4 / 12, "incorrect": 4 / 12, "no_answer": 4 / 12})
    assert m["valid_equations_share_of_correct"] == 1.0


def test_pass_at_k_skips_k_above_the_sample_count():
    assert set(metrics.split_metrics(_table(), ks=[1, 8])["pass@k"]) == {1}


def test_coverage_both_definitions():
    cov = metrics.coverage(_table())
    assert cov["coverage_mean"] == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)
    assert cov["coverage_any"] == pytest.approx(2 / 3)
