"""Metrics against brute force and hand-made tables."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from selfimprove import artifacts, estimators, metrics
from selfimprove.config import EvaluateConfig, build


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


def test_split_metrics_rows_carry_intervals_and_disparity():
    m = metrics.split_metrics(_table(), ks=[1, 2], n_boot=200, seed=0)
    # levels 1 and 2 here: disparity (1.0 - 0.0) / 1.0 between the lowest and highest level present
    assert m["group_disparity"]["value"] == 1.0 and m["group_disparity"]["levels"] == [1, 2]
    rows = {(r["metric"], r["subset"], r["k"]): r for r in m["rows"]}
    assert set(rows) == {("pass@1", "all", 1), ("pass@1", "L1", 1), ("pass@1", "L2", 1),
                         ("group_disparity", "L1-L2", None), ("pass@k", "all", 1), ("pass@k", "all", 2)}
    p1 = rows[("pass@1", "all", 1)]
    assert p1["value"] == pytest.approx(1 / 3) and p1["n"] == 3 and 0 <= p1["ci_low"] <= p1["ci_high"] <= 1
    assert rows[("pass@1", "L1", 1)]["ci_low"] == rows[("pass@1", "L1", 1)]["ci_high"] == 1.0  # one problem


def test_a_problem_without_a_level_does_not_drop_levels_and_disparity():
    # MATH's "Level ?" problems load with level None (tasks.math_level); the others keep their levels
    df = _table()
    extra = df[df["problem_id"] == "p3"].assign(problem_id="p4", level=None)
    m = metrics.split_metrics(pd.concat([df, extra], ignore_index=True), ks=[1])
    assert m["pass@1"] == pytest.approx(1 / 4)
    assert m["pass@1_by_level"] == {1: 1.0, 2: 0.0}
    assert m["group_disparity"]["value"] == 1.0 and m["group_disparity"]["levels"] == [1, 2]
    gd = [r for r in m["rows"] if r["metric"] == "group_disparity"]
    assert gd[0]["n"] == 3  # the problems with a level


def test_bootstrap_interval_matches_the_normal_approximation():
    values = [1.0] * 300 + [0.0] * 700  # p = 0.3, n = 1000: 0.3 +- 1.96 * sqrt(0.21 / 1000) = +-0.0284
    lo, hi = estimators.bootstrap_ci(values, n_boot=2000, seed=1)
    assert lo == pytest.approx(0.3 - 0.0284, abs=0.004) and hi == pytest.approx(0.3 + 0.0284, abs=0.004)
    assert estimators.bootstrap_ci(values, n_boot=2000, seed=1) == (lo, hi)  # seeded: reproducible
    assert estimators.bootstrap_ci([], 100) == (None, None)
    assert estimators.bootstrap_ci([0.5, float("nan")], 100) == (0.5, 0.5)


def test_disparity_by_hand_and_its_interval():
    correct = [1] * 90 + [0] * 10 + [1] * 30 + [0] * 70  # L1 0.9, L5 0.3
    level = [1] * 100 + [5] * 100
    d = estimators.disparity(correct, level, n_boot=1000, seed=0)
    assert d["value"] == pytest.approx((0.9 - 0.3) / 0.9) and d["accuracy"] == {1: 0.9, 5: 0.3}
    lo, hi = d["ci"]
    assert lo < d["value"] < hi and hi - lo < 0.3
    assert estimators.disparity([0, 0, 1], [1, 1, 5], n_boot=0)["value"] is None  # L1 accuracy 0: undefined
    assert estimators.disparity([1, 0], [3, 3]) is None  # one level only
    ch = estimators.disparity_change(correct, [1] * 90 + [0] * 10 + [0] * 100, level, n_boot=500)
    assert ch["value"] == pytest.approx(1.0 - (0.9 - 0.3) / 0.9) and ch["ci"][0] > 0


def test_paradigm_advice_rule():
    assert estimators.paradigm_advice(0.51) == "DPO or SFT-DPO"
    assert estimators.paradigm_advice(0.5) == "SFT" and estimators.paradigm_advice(0.1) == "SFT"
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        estimators.paradigm_advice(1.5)


def _run_dir(tmp_path, write_graded):
    """A hand-made run: M1 and M2 graded sample tables for test, OOD (and train for M1)."""
    from selfimprove.config import RunConfig

    paths = artifacts.RunPaths(tmp_path / "run")
    cfg = RunConfig(name="run", iterations=2)
    artifacts.Manifest.open(paths, cfg.recipe(), cfg.digest())
    outcomes = {1: {"p1": (1, [1, 1, 0, 0]), "p2": (0, [1, 0, 0, 0]), "p3": (0, [0, 0, 0, 0])},
                2: {"p1": (1, [1, 1, 1, 0]), "p2": (1, [1, 1, 0, 0]), "p3": (0, [0, 0, 0, 0])}}
    for t, probs in outcomes.items():
        for split in ("test", "ood", "train") if t == 1 else ("test", "ood"):
            rows = []
            for pid, (greedy, sampled) in probs.items():
                level = int(pid[1]) if split != "train" else None
                for dec, flags in (("greedy", [greedy]), ("sample", sampled)):
                    for i, ok in enumerate(flags):
                        resp = f"{i} + 1 = {i + 1}\n#### {i + 1}" if ok else f"{pid} {i} + 2 = 9\n#### 9"
                        rows.append(dict(iteration=t, split=split, task="arith", problem_id=pid, level=level,
                                         decoding=dec, sample_idx=i, response=resp, finish_reason="stop",
                                         status="correct" if ok else "incorrect", correct=bool(ok)))
            write_graded(pd.DataFrame(rows), paths.samples(t, split))
    return paths


def test_recompute_writes_metrics_tidy_table_and_per_problem(tmp_path, monkeypatch, write_graded):
    from selfimprove import diversity

    monkeypatch.setitem(diversity._MODELS, "fake", _FakeModel())
    paths = _run_dir(tmp_path, write_graded)
    written = metrics.recompute(paths.root, {"embedding_model": "fake", "cache_dir": str(tmp_path / "cache"),
                                             "diversity_per_problem": 2, "bootstrap": 100, "ks": [1, 2, 4]},
                                log=lambda *a: None)
    assert paths.metrics(1) in written and paths.per_problem(2) in written
    table = pd.read_parquet(paths.report / "metrics.parquet")
    assert list(table.columns) == ["iteration", "split", "metric", "subset", "k", "value", "ci_low", "ci_high", "n"]
    get = table.set_index(["iteration", "split", "metric", "subset", "k"])["value"]
    assert get[(2, "test", "pass@1", "all", 1)] == pytest.approx(2 / 3)
    assert get[(1, "train", "coverage_mean", "all", pd.NA)] == pytest.approx((0.5 + 0.25 + 0) / 3)
    assert get[(1, "train", "coverage_any", "all", pd.NA)] == pytest.approx(2 / 3)
    # IS(2) = {p2}; M1 had 1 of 4 samples right on p2: accuracy@1 0.25, @4 1.0
    assert get[(2, "test", "set:improved", "all", pd.NA)] == 1
    assert get[(2, "test", "m1_accuracy@N", "improved", 1)] == pytest.approx(0.25)
    assert get[(2, "test", "m1_accuracy@N", "improved", 4)] == pytest.approx(1.0)
    assert get[(2, "test", "m1_accuracy@N", "still_unsolved", 4)] == 0.0  # p3
    # diversity sets of 2 (k = 2): M1 correct sets p1 (2 right); incorrect sets p1, p2, p3
    div = table[(table["iteration"] == 1) & (table["split"] == "test") & (table["metric"] == "distinct_n")]
    assert dict(zip(div["subset"], div["n"])) == {"correct": 1, "incorrect": 3} and set(div["k"]) == {2}
    emb = table[(table["metric"] == "embedding_diversity") & table["value"].notna()]
    assert len(emb) > 0 and emb["value"].between(0, 2).all() and (emb["value"] > 0).any()
    assert set(emb["split"]) == {"test"}  # embedding_splits: test only by default
    m1 = json.loads(paths.metrics(1).read_text())
    assert m1["paradigm_advice"]["advice"] == "SFT"  # coverage 0.25 <= 0.5
    assert m1["evaluate"]["diversity_per_problem"] == 2 and "run_dir" not in m1["evaluate"]
    pp = pd.read_parquet(paths.per_problem(2))
    assert set(pp["split"]) == {"test", "ood"} and {"greedy_correct", "n", "c", "distinct_n:correct"} <= set(pp)
    assert metrics.collect(paths.root).equals(metrics.collect(paths.root))


def test_evaluate_refuses_an_ungraded_table(tmp_path, write_graded):
    paths = _run_dir(tmp_path, write_graded)
    paths.graded(1, "test").unlink()  # sampled, not graded
    with pytest.raises(metrics.MetricsError, match=r"the test sample table of M1: .*graded_test.parquet does not "
                                                   r"exist: the verify stage of iteration 1 has not graded"):
        metrics.recompute(paths.root, {"embedding_model": ""}, log=lambda *a: None)


def test_evaluate_reads_the_sample_table_as_sampled_and_its_grades(tmp_path, write_graded):
    """M_t's metrics come from the sample table joined with its graded table; no grade lives in the sample table."""
    paths = _run_dir(tmp_path, write_graded)
    assert "status" not in pd.read_parquet(paths.samples(1, "test")).columns
    m, _ = metrics.evaluate(paths, 1, build(EvaluateConfig, {"run_dir": str(paths.root), "iteration": 1,
                                                             "embedding_model": "", "bootstrap": 0}, "test"))
    assert m["test"]["pass@1"] == pytest.approx(1 / 3) and "train_data_rows" not in m


class _FakeModel:
    def encode(self, texts, **_):
        return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)


@pytest.mark.parametrize("text,message", [
    ("evaluate: {diversity_per_problem: 1}", r"'diversity_per_problem' must be 0 \(all responses\) or >= 2"),
    ("evaluate: {diversity_per_problem: 6, ks: [1]}\nsample: {n_eval_samples: 4}",
     r"evaluate.diversity_per_problem 6 needs sample.n_eval_samples >= 6"),
    ("evaluate: {embedding_problems: -1}", r"'embedding_problems' must be >= 0"),
    ("evaluate: {bootstrap: -5}", r"'bootstrap' must be >= 0"),
    ("evaluate: {embeding_model: x}", r"unknown key 'embeding_model' \(did you mean 'embedding_model'\?\)"),
])
def test_bad_evaluate_settings_fail_naming_the_key(tmp_path, text, message):
    from selfimprove import config

    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(config.RecipeError, match=message):
        config.load_recipe(tmp_path / "r.yaml")


def test_a_damaged_metrics_file_or_sample_table_is_named(tmp_path, capsys):
    from selfimprove import cli

    paths = artifacts.RunPaths(tmp_path)
    artifacts.Manifest.open(paths, {"paradigm": "dpo"}, "hash1")
    artifacts.write_json({"iteration": 1}, paths.metrics(1))
    paths.iter_dir(2).mkdir()
    paths.metrics(2).write_text('{"iteration": 2, "te')  # cut short
    with pytest.raises(metrics.MetricsError, match=r"iter_2/metrics.json: not valid JSON .*`selfimprove metrics"):
        metrics.iteration_metrics(tmp_path)
    assert cli.main(["figures", str(tmp_path)]) == 2
    assert "iter_2/metrics.json: not valid JSON" in capsys.readouterr().err
    paths.iter_dir(1).mkdir(exist_ok=True)
    for p in (paths.samples(1, "test"), paths.graded(1, "test")):
        p.write_bytes(b"PAR1 cut short")
    with pytest.raises(metrics.MetricsError, match=r"tests: .*_test.parquet: cannot be read, the file is damaged"):
        metrics._read(paths, 1, "test", "tests")


def test_valid_equation_share_of_correct_responses_per_level():
    t = _table()
    lucky = (t["problem_id"] == "p2") & t["correct"] & (t["decoding"] == "sample")
    assert lucky.sum() == 1
    t.loc[lucky, "response"] = "1 + 1 = 3\n#### 2"  # the right answer through a false equation
    m = metrics.split_metrics(t, ks=[1])
    level_p2 = int(t.loc[lucky, "level"].iloc[0])
    by_level = m["valid_equations_share_of_correct_by_level"]
    assert by_level[level_p2] == 0.0 and by_level[1 if level_p2 != 1 else 2] == 1.0
    assert m["valid_equations_share_of_correct"] == pytest.approx(3 / 4)
