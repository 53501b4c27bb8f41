"""Improvement, lost and stable sets, the transition table by level, and M1's accuracy@N, on hand-made tables."""

import pandas as pd
import pytest

from selfimprove import improvement


def _pp(greedy: dict, level: dict | None = None, c: dict | None = None, n: int = 4) -> pd.DataFrame:
    ids = sorted(greedy)
    return pd.DataFrame({"level": [(level or {}).get(p, 1) for p in ids],
                         "greedy_correct": [float(greedy[p]) for p in ids],
                         "n": n, "c": [(c or {}).get(p, 0) for p in ids]}, index=pd.Index(ids, name="problem_id"))


# M1 and M_t greedy outcomes over 8 problems on two levels
M1 = {"a": 1, "b": 1, "c": 0, "d": 0, "e": 1, "f": 0, "g": 0, "h": 0}
MT = {"a": 1, "b": 0, "c": 1, "d": 0, "e": 1, "f": 1, "g": 1, "h": 0}
LEVEL = {"a": 1, "b": 1, "c": 1, "d": 1, "e": 2, "f": 2, "g": 2, "h": 2}
# M1's correct samples of 4: the gained problems c, f, g were within M1's reach, d and h less so
C1 = {"a": 4, "b": 3, "c": 2, "d": 0, "e": 4, "f": 1, "g": 3, "h": 1}


def test_transition_sets_by_hand():
    sets = improvement.transition_sets(pd.Series(M1).astype(bool), pd.Series(MT).astype(bool))
    assert sets == {"improved": ["c", "f", "g"], "lost": ["b"], "stable_correct": ["a", "e"],
                    "stable_wrong": ["d", "h"]}


def test_transition_table_by_level_by_hand():
    table = improvement.transition_table(pd.Series(M1), pd.Series(MT), pd.Series(LEVEL))
    assert list(table.index) == ["L1", "L2", "all"]
    assert table.loc["L1"].to_dict() == {"improved": 1, "lost": 1, "stable_correct": 1, "stable_wrong": 1,
                                         "problems": 4}
    assert table.loc["L2"].to_dict() == {"improved": 2, "lost": 0, "stable_correct": 1, "stable_wrong": 1,
                                         "problems": 4}
    assert table.loc["all", "improved"] == 3 and table.loc["all", "problems"] == 8
    # between any two iterations: M_t back to M1 swaps gained and lost
    back = improvement.transition_table(pd.Series(MT), pd.Series(M1), pd.Series(LEVEL))
    assert back.loc["all", "lost"] == 3 and back.loc["all", "improved"] == 1


def test_transition_table_keeps_levels_when_a_problem_has_none():
    level = pd.Series({**LEVEL, "h": None})
    table = improvement.transition_table(pd.Series(M1), pd.Series(MT), level)
    assert list(table.index) == ["L1", "L2", "all"]
    assert table.loc["L2", "problems"] == 3 and table.loc["all", "problems"] == 8


def test_transition_sets_refuse_different_problems():
    with pytest.raises(ValueError, match=r"1 only before \(e.g. \['z'\]\)"):
        improvement.transition_sets(pd.Series({"a": True, "z": False}), pd.Series({"a": True}))


def test_accuracy_at_n_on_improvement_set_and_baselines_by_hand():
    m1, mt = _pp(M1, LEVEL, C1), _pp(MT, LEVEL)
    subsets = improvement.baseline_subsets(m1, mt)
    assert subsets == {"improved": ["c", "f", "g"], "still_unsolved": ["d", "h"],
                       "m1_wrong": ["c", "d", "f", "g", "h"], "all": list("abcdefgh")}
    rows = improvement.accuracy_at_n(m1, subsets, n_boot=0)
    got = {(r["subset"], r["k"]): r["value"] for r in rows}
    assert sorted({k for _, k in got}) == [1, 2, 4]  # 4 samples per problem: N = 1, 2, 4 only
    # pass@N of 4 samples with c correct: N=1 c/4; N=2 1 - C(4-c,2)/6; N=4 1 if c > 0
    p2 = {0: 0.0, 1: 0.5, 2: 5 / 6, 3: 1.0, 4: 1.0}
    assert got[("improved", 1)] == pytest.approx((2 + 1 + 3) / 4 / 3)
    assert got[("improved", 2)] == pytest.approx((p2[2] + p2[1] + p2[3]) / 3)
    assert got[("improved", 4)] == pytest.approx(1.0)
    assert got[("still_unsolved", 4)] == pytest.approx(0.5)  # d: 0 of 4, h: 1 of 4
    assert got[("m1_wrong", 4)] == pytest.approx(4 / 5)
    assert got[("all", 1)] == pytest.approx(sum(C1.values()) / 32)
    assert all(r["ci_low"] is None for r in rows)  # n_boot = 0: no interval


def test_accuracy_at_n_grid_stops_at_64():
    m1 = _pp({"a": 0}, c={"a": 10}, n=100)
    rows = improvement.accuracy_at_n(m1, {"all": ["a"]}, n_boot=0)
    assert [r["k"] for r in rows] == [1, 2, 4, 8, 16, 32, 64]


def test_improvement_rows_and_share():
    imp = improvement.improvement(_pp(M1, LEVEL, C1), _pp(MT, LEVEL), n_boot=50)
    counts = {(r["metric"], r["subset"]): r["value"] for r in imp["rows"] if r["metric"].startswith("set:")}
    assert counts[("set:improved", "all")] == 3 and counts[("set:lost", "L1")] == 1
    assert imp["accuracy_at_n_max"] == 4
    acc = [r for r in imp["rows"] if r["metric"] == "m1_accuracy@N" and r["subset"] == "improved" and r["k"] == 1]
    assert acc[0]["ci_low"] <= acc[0]["value"] <= acc[0]["ci_high"]
    assert improvement.share_within_reach(_pp(M1, LEVEL, C1), ["c", "d"], 4) == pytest.approx(0.5)
    assert improvement.share_within_reach(_pp(M1, LEVEL, C1), [], 4) is None


def test_transition_sets_refuse_missing_greedy_outcomes():
    with pytest.raises(ValueError, match=r"before has none for 1 \(e.g. \['b'\]\)"):
        improvement.transition_sets(pd.Series({"a": 1.0, "b": float("nan")}), pd.Series({"a": 1.0, "b": 0.0}))
