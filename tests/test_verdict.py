"""The verdict on hand-made runs: progress, reversal, regression and no gain, with the reasons it gives."""

import json

import numpy as np
import pandas as pd
import pytest

from selfimprove import runs, verdict
from selfimprove.config import RecipeError, build

N_TEST, N_OOD = 400, 300


def _first(n: int, share: float) -> np.ndarray:
    """n problems, the first share of them correct."""
    return (np.arange(n) < round(share * n)).astype(float)


def _table(test_acc, ood_acc, div_correct, div_incorrect, samples_c=2, levels=(1, 5), shift=0) -> pd.DataFrame:
    """Per-problem table as iter_<t>/per_problem.parquet. Level 1 problems come first, so greedy accuracy
    spreads over levels as in a real run (easy first); `shift` moves the solved problems along (churn)."""
    rows = []
    for split, n, acc in (("test", N_TEST, test_acc), ("ood", N_OOD, ood_acc)):
        g = np.roll(_first(n, acc), shift)
        lv = np.where(np.arange(n) < n // 2, levels[0], levels[1])
        for i in range(n):
            rows.append({"split": split, "problem_id": f"{split}{i:03d}", "level": int(lv[i]),
                         "greedy_correct": g[i], "n": 4, "c": samples_c if g[i] == 0 else 4,
                         # diversity only on test, varying a little between problems
                         "distinct_n:correct": div_correct + 0.01 * (i % 5) if split == "test" else np.nan,
                         "distinct_n:incorrect": div_incorrect + 0.01 * (i % 3) if split == "test" else np.nan})
    return pd.DataFrame(rows)


M1 = _table(0.40, 0.50, 0.40, 0.50)


def test_progress_when_pass1_gains_and_nothing_declines():
    v = verdict.judge({1: M1, 2: _table(0.50, 0.50, 0.40, 0.50)}, n_boot=500)
    assert v.label == "progress" and v.best == 2 == v.last
    assert v.line.startswith("PROGRESS: M1->M2 (best and last): pass@1 +0.100 [")
    assert "no decline" in v.line
    gain = v.table[v.table["kind"] == "gain"].iloc[0]
    assert gain["change"] == pytest.approx(0.10) and gain["ci_low"] > 0 and gain["fired"]
    assert not v.table[v.table["kind"] == "decline"]["fired"].any()
    # every gained problem had 2 of M1's 4 samples right: pass@4 = 1, the whole gain was within reach
    note = v.table[v.table["kind"] == "note"].iloc[0]
    assert note["signal"] == "share of IS(t) within M1's pass@4" and note["mt"] == pytest.approx(1.0)
    assert note["n"] == 40 and "100% of the 40 gained problems were within M1's pass@4" in v.line


def test_reversal_names_every_decline():
    later = {2: _table(0.46, 0.45, 0.40, 0.50), 3: _table(0.50, 0.30, 0.25, 0.40)}
    v = verdict.judge({1: M1, **later}, n_boot=500)
    assert v.label == "reversal" and v.best == 3 == v.last
    fired = set(v.table[v.table["fired"] & (v.table["kind"] == "decline")]["signal"] + "/"
                + v.table[v.table["fired"] & (v.table["kind"] == "decline")]["split"])
    assert {"pass@1/ood", "distinct_n (correct)/test", "distinct_n (incorrect)/test"} <= fired
    assert v.line.startswith("REVERSAL: M1->M3 (best and last): pass@1 +0.100")
    assert "pass@1 ood -0.200" in v.line and "distinct_n (correct) -" in v.line
    # OOD 0.50 -> 0.30 is -40% of M1, distinct-n of correct responses 0.42 -> 0.27 is -36%: OOD comes first
    assert "while pass@1 ood -0.200" in v.line and "; the largest decline: pass@1 ood (-40% of M1); " in v.line
    ood = v.table[(v.table["signal"] == "pass@1") & (v.table["split"] == "ood")].iloc[0]
    assert ood["change"] == pytest.approx(-0.20) and ood["ci_high"] < 0


def test_reversal_by_the_last_iterate_after_a_clean_best():
    later = {2: _table(0.55, 0.50, 0.40, 0.50), 3: _table(0.50, 0.30, 0.40, 0.50)}
    v = verdict.judge({1: M1, **later}, n_boot=500)
    assert (v.best, v.last, v.label) == (2, 3, "reversal")
    assert v.line.startswith("REVERSAL: M1->M3 (last)") and "M1->M2 (best): progress" in v.line
    assert set(v.table["comparison"]) == {"M1->M2 (best)", "M1->M3 (last)"}


def test_regression_when_the_interval_covers_zero_and_declines_fire():
    # M2 solves test problems 20..183 where M1 solved 0..159: 24 gained, 20 lost, +0.01 net
    v = verdict.judge({1: M1, 2: _table(0.41, 0.20, 0.10, 0.10, shift=20)}, n_boot=500)
    assert v.label == "regression" and v.line.startswith("REGRESSION: M1->M2 (best and last): pass@1 +0.010 [")
    assert "is not a gain, while " in v.line
    gain = v.table[v.table["kind"] == "gain"].iloc[0]
    assert gain["ci_low"] < 0 < gain["ci_high"] and not gain["fired"]
    # OOD 0.50 -> 0.20 (-60%), correct distinct-n 0.42 -> 0.12 (-71%), incorrect 0.51 -> 0.11 (-78%): the largest
    assert v.line.endswith("the largest decline: distinct_n (incorrect) (-78% of M1)")


def test_no_gain_when_nothing_moves():
    v = verdict.judge({1: M1, 2: _table(0.40, 0.50, 0.40, 0.50)}, n_boot=500)
    assert v.label == "no gain"
    assert v.line == "NO GAIN: M1->M2 (best and last): pass@1 +0.000 [+0.000, +0.000] is not a gain"
    assert not v.table[v.table["kind"] == "decline"]["fired"].any()


def test_regression_names_the_largest_decline_relative_to_m1():
    # OOD 0.50 -> 0.45: -0.05, -10% of M1; correct distinct-n 0.12 -> 0.09: -0.03 but -25% of M1. By absolute
    # change OOD would lead; relative to M1 (verdict.decline_size), diversity does.
    m1 = _table(0.40, 0.50, 0.10, 0.50)
    v = verdict.judge({1: m1, 2: _table(0.40, 0.45, 0.07, 0.50)}, n_boot=500)
    fired = v.table[v.table["fired"] & (v.table["kind"] == "decline")]
    assert set(fired["signal"] + "/" + fired["split"]) == {"pass@1/ood", "distinct_n (correct)/test"}
    assert v.label == "regression" and v.line.startswith("REGRESSION: M1->M2 (best and last): pass@1 +0.000")
    assert "while distinct_n (correct) -25.0%" in v.line and ", pass@1 ood -0.050" in v.line
    assert v.line.endswith("the largest decline: distinct_n (correct) (-25% of M1)")


def test_a_clean_best_iterate_outranks_a_regressing_last_one():
    later = {2: _table(0.55, 0.50, 0.40, 0.50), 3: _table(0.40, 0.30, 0.40, 0.50)}
    v = verdict.judge({1: M1, **later}, n_boot=500)
    assert (v.best, v.last, v.label) == (2, 3, "progress")
    assert v.line.startswith("PROGRESS: M1->M2 (best)") and v.line.endswith("(M1->M3 (last): regression)")


def test_best_iterate_is_one_rule():
    assert runs.best_iterate({1: 0.9, 2: 0.5, 3: 0.6, 4: 0.6}) == 3  # t >= 2, the earliest of a tie
    assert runs.best_iterate({1: 0.9, 2: float("nan")}) is None
    v = verdict.judge({1: M1, 2: _table(0.50, 0.5, 0.4, 0.5), 3: _table(0.50, 0.5, 0.4, 0.5)}, n_boot=50)
    assert v.best == 2 and v.last == 3


def _hand_written_run(root, config: dict):
    """A run directory with a hand-written manifest and per-problem tables: M1 and a reversal at M2 (OOD
    -0.02, nothing else)."""
    for t, table in ((1, M1), (2, _table(0.50, 0.48, 0.40, 0.50))):
        (root / f"iter_{t}").mkdir(parents=True)
        table.to_parquet(root / f"iter_{t}" / "per_problem.parquet")
    (root / "manifest.json").write_text(json.dumps({"config": config, "stages": {}}))
    return root


def test_a_run_is_judged_with_the_thresholds_its_recipe_recorded(tmp_path):
    old = runs.Run(_hand_written_run(tmp_path / "old", {"task": "arith"}))  # made before the `verdict` section
    assert old.thresholds() == verdict.Thresholds() and old.iterations() == [1, 2]
    assert verdict.for_run(old.root, n_boot=300).label == "reversal"
    own = runs.Run(_hand_written_run(tmp_path / "own", {"task": "arith", "verdict": {"ood_drop": 0.05}}))
    assert own.thresholds() == verdict.Thresholds(ood_drop=0.05)
    v = verdict.for_run(own.root, n_boot=300)  # no thresholds given: the run's own
    assert v.label == "progress"
    verdict.write(v, own.root, own.thresholds())
    assert json.loads((own.root / "report" / "verdict.json").read_text())["thresholds"]["ood_drop"] == 0.05
    # --threshold goes over the recorded section (for that command only: the manifest is not touched)
    assert own.thresholds({"diversity_drop": 0.1}) == verdict.Thresholds(ood_drop=0.05, diversity_drop=0.1)
    assert own.thresholds({"ood_drop": 0.01}).ood_drop == 0.01 and own.thresholds().ood_drop == 0.05
    bad = runs.Run(_hand_written_run(tmp_path / "bad", {"verdict": {"od_drop": 0.05}}))
    with pytest.raises(RecipeError, match=r"bad/manifest.json: config 'verdict': unknown key 'od_drop'"):
        bad.thresholds()


def test_group_disparity_signal_by_hand():
    v = verdict.judge({1: M1, 2: _table(0.60, 0.50, 0.40, 0.50)}, n_boot=200)
    gd = v.table[(v.table["signal"] == "group disparity (L1-L5)") & (v.table["split"] == "test")].iloc[0]
    # M1: 160 of the 200 level-1 problems right, none of level 5 -> GD 1; M2: all 200 level-1 and 40 of
    # level 5 -> GD (1 - 0.2) / 1 = 0.8
    assert gd["m1"] == pytest.approx(1.0) and gd["mt"] == pytest.approx(0.8)
    assert gd["change"] == pytest.approx(-0.2) and not gd["fired"]  # disparity fell: no decline


def test_group_disparity_signal_survives_a_problem_without_a_level():
    m1, m2 = M1.copy(), _table(0.60, 0.50, 0.40, 0.50)
    for t in (m1, m2):
        t["level"] = t["level"].astype(object)
        t.loc[t["problem_id"] == "test399", "level"] = None  # a MATH "Level ?" problem
    v = verdict.judge({1: m1, 2: m2}, n_boot=200)
    gd = v.table[(v.table["signal"] == "group disparity (L1-L5)") & (v.table["split"] == "test")].iloc[0]
    # as test_group_disparity_signal_by_hand without test399 (level 5, wrong): M2's level 5 is 40 of 199
    assert gd["m1"] == pytest.approx(1.0) and gd["mt"] == pytest.approx(1 - 40 / 199) and gd["n"] == N_TEST - 1


def test_answer_selection_share_uses_all_of_m1s_samples_up_to_64():
    # README: N = 64 or the most samples M1 has. 50 samples, 1 correct on every gained problem: pass@50 = 1
    m1 = M1.assign(n=50, c=np.where(M1["greedy_correct"] == 0, 1, 50))
    v = verdict.judge({1: m1, 2: _table(0.50, 0.50, 0.40, 0.50)}, n_boot=100)
    share = v.table[v.table["kind"] == "note"].iloc[0]
    assert share["signal"] == "share of IS(t) within M1's pass@50" and share["mt"] == pytest.approx(1.0)


def test_thresholds_change_the_verdict_and_are_validated():
    run = {1: M1, 2: _table(0.50, 0.48, 0.38, 0.50)}  # OOD -2 points; correct distinct-n -4.8% (0.42 -> 0.40)
    v = verdict.judge(run, n_boot=500)
    fired = v.table[v.table["fired"] & (v.table["kind"] == "decline")]
    assert v.label == "reversal" and list(fired["signal"] + "/" + fired["split"]) == ["pass@1/ood"]
    assert verdict.judge(run, verdict.Thresholds(diversity_drop=0.04), n_boot=500).table.query(
        "signal == 'distinct_n (correct)'")["fired"].item()
    lenient = verdict.Thresholds(ood_drop=0.05, diversity_drop=0.20)
    assert verdict.judge(run, lenient, n_boot=500).label == "progress"
    with pytest.raises(RecipeError, match="'ood_drop' must be >= 0"):
        build(verdict.Thresholds, {"ood_drop": -1}, "--threshold")
    with pytest.raises(RecipeError, match="unknown key 'od_drop'"):
        build(verdict.Thresholds, {"od_drop": 1}, "--threshold")


def test_verdict_needs_two_iterates_and_writes_markdown():
    with pytest.raises(ValueError, match="at least one later iterate"):
        verdict.judge({1: M1})
    v = verdict.judge({1: M1, 2: _table(0.50, 0.50, 0.40, 0.50)}, n_boot=100)
    md = verdict.to_markdown(v)
    assert md.startswith("**Verdict: PROGRESS") and "| M1->M2 (best and last) | pass@1 | test |" in md


def test_a_proven_pass1_loss_is_a_regression_not_no_gain():
    v = verdict.judge({1: M1, 2: _table(0.30, 0.50, 0.40, 0.50)}, n_boot=500)
    assert v.label == "regression"
    assert v.line.startswith("REGRESSION: M1->M2 (best and last): pass@1 -0.100 [") and " is a loss" in v.line
    assert v.line.endswith("; the largest decline: pass@1 (-25% of M1)")
    loss = v.table[(v.table["kind"] == "decline") & (v.table["signal"] == "pass@1") & (v.table["split"] == "test")]
    assert len(loss) == 1 and loss["fired"].iloc[0] and loss["ci_high"].iloc[0] < 0
    # a loss inside the noise moves nothing: no gain
    assert verdict.judge({1: M1, 2: _table(0.395, 0.50, 0.40, 0.50)}, n_boot=500).label == "no gain"
