"""Beyond the paper, wired into a run (docs/beyond.md): the evaluate stage's rows (beyond_metrics.py) on hand-made
tables against brute force and hand-computed values, its token entropy and KL(M_t || M1) from two bigram models
saved as model folders, the deep evaluation's problem subset and recipe section, the figures on a hand-made
table; and on the tiny run (slow): the rows of every iteration, the deep evaluation recorded in the manifest,
the report beside the verdict, the new figure and the explorer's ledger."""

import itertools
import json
import math
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from selfimprove import artifacts, beyond_metrics, config, deep, explore, metrics, pipeline, plots, report
from selfimprove.config import EvaluateConfig, RecipeError
from selfimprove.runs import Run

CFG = EvaluateConfig(run_dir="x", iteration=2, bootstrap=200)


def _sibling(name: str):
    """Another test module of this folder, for its helpers (pytest imports tests with --import-mode=importlib,
    which puts no test folder on sys.path)."""
    import importlib.util
    import sys
    from pathlib import Path

    if f"_sibling_{name}" not in sys.modules:
        spec = importlib.util.spec_from_file_location(f"_sibling_{name}", Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[f"_sibling_{name}"] = module
    return sys.modules[f"_sibling_{name}"]


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of k-subsets of n responses (c correct) holding a correct one, by enumeration."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def _table(t, greedy: dict, samples: dict, answers: dict | None = None) -> pd.DataFrame:
    """A graded test table of M_t: `greedy` {pid: correct}, `samples` {pid: [correct, ...]}, `answers` {pid:
    [extracted, ...]} (default: '1' for a correct response, '0' for another)."""
    rows = []
    for pid, ok in greedy.items():
        level = 1 if pid in ("p1", "p2") else 2
        base = dict(iteration=t, split="test", task="arith", problem_id=pid, level=level, prompt=f"Q {pid}",
                    n_tokens=3, finish_reason="stop")
        rows.append(base | dict(decoding="greedy", sample_idx=0, response="r", extracted="1" if ok else "0",
                                status="correct" if ok else "incorrect", correct=ok))
        for k, c in enumerate(samples[pid]):
            ans = (answers or {}).get(pid, ["1" if x else "0" for x in samples[pid]])[k]
            rows.append(base | dict(decoding="sample", sample_idx=k, response=f"r{k}", extracted=ans,
                                    status="correct" if c else "incorrect", correct=c))
    return pd.DataFrame(rows)


F, T = False, True
# M1 draws 8 samples per problem (as the demo's M1 draws 64), M2 draws 4. p2's only correct M1 sample is its 6th:
# outside M1's first 4, so the sampled ledger (4 against 4) calls p2 gained, not preserved.
M1 = _table(1, {"p1": T, "p2": F, "p3": T, "p4": F},
            {"p1": [T, F, F, F, F, F, F, F], "p2": [F, F, F, F, F, T, F, F], "p3": [T, T, F, F, F, F, F, F],
             "p4": [F] * 8})
M2 = _table(2, {"p1": F, "p2": T, "p3": T, "p4": F},
            {"p1": [F, F, F, F], "p2": [T, T, T, T], "p3": [F, F, F, F], "p4": [F, F, F, F]},
            {"p1": ["1", "1", "2", "2"], "p2": ["7"] * 4, "p3": ["9", "8", "8", "8"], "p4": [None] * 4})


def _value(rows, metric, subset="all", k=None):
    found = [r for r in rows if r["metric"] == metric and r["subset"] == subset and (k is None or r["k"] == k)]
    assert len(found) == 1, (metric, subset, k, found)
    return found[0]


def test_split_rows_against_brute_force_and_by_hand():
    out, rows = beyond_metrics.split_rows(M2, M1, CFG, n_options=0)
    m1_c = {"p1": 1, "p2": 1, "p3": 2, "p4": 0}
    m2_c = {"p1": 0, "p2": 4, "p3": 0, "p4": 0}
    brute_m1 = {k: np.mean([_brute_pass_at_k(8, c, k) for c in m1_c.values()]) for k in (1, 2, 4)}
    brute_m2 = {k: np.mean([_brute_pass_at_k(4, c, k) for c in m2_c.values()]) for k in (1, 2, 4)}
    for k in (1, 2, 4):  # the curve to n = 4 and the paired difference M2 - M1 (M1 with all its 8 samples)
        assert _value(rows, "pass@k_curve", k=k)["value"] == pytest.approx(brute_m2[k])
        diff = _value(rows, "pass@k_diff", k=k)
        assert diff["value"] == pytest.approx(brute_m2[k] - brute_m1[k])
        assert diff["ci_low"] <= diff["value"] <= diff["ci_high"] and diff["n"] == 4
    k_star = next((k for k in (1, 2, 4) if brute_m1[k] >= brute_m2[k]), None)
    cross = _value(rows, "crossover_k")
    assert cross["value"] == k_star and cross["k"] == 4 and out["vs_m1"]["crossover_k"] == k_star
    assert k_star == 4  # M2 leads at k = 1 and 2 (0.25 against 0.125 and 0.241), M1 catches up at 4 (0.446)
    # the ledger, greedy: p1 lost, p2 gained, p3 preserved, p4 never; sampled (M1's first 4 samples against
    # M2's 4): p1 lost, p2 gained, p3 lost, p4 never
    assert out["support"]["greedy"]["all"] == {"preserved": 1, "lost": 1, "gained": 1, "never": 1}
    assert out["support"]["sample"]["all"] == {"preserved": 0, "lost": 2, "gained": 1, "never": 1}
    for decoding in ("greedy", "sample"):
        assert out["support"][decoding]["L1"] == {"preserved": 0, "lost": 1, "gained": 1, "never": 0}
        r = _value(rows, f"support_{decoding}:lost", "L1")
        assert r["value"] == 0.5 and r["n"] == 2 and r["k"] == (4 if decoding == "sample" else None)
        assert r["ci_low"] <= 0.5 <= r["ci_high"]
    # cover@tau: M2's shares of correct samples 0, 1, 0, 0
    assert [_value(rows, f"cover@{tau:g}")["value"] for tau in (0.1, 0.5, 0.9)] == [0.25, 0.25, 0.25]
    # answers: solved p2 (one answer: 0 nats); unsolved p1 (2 and 2: ln 2), p3 (1 and 3), p4 (no answer: one
    # category, 0 nats)
    h3 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert _value(rows, "answer_entropy", "solved")["value"] == 0
    assert _value(rows, "answer_entropy", "unsolved")["value"] == pytest.approx((math.log(2) + h3) / 3)
    assert _value(rows, "distinct_answers", "unsolved")["value"] == pytest.approx(5 / 3)
    assert not [r for r in rows if "guess" in r["metric"] or "uninformative" in r["metric"]]  # open answers


def test_the_sampled_ledger_uses_m1s_first_n_samples():
    m1 = M1.copy()
    m1.loc[(m1["problem_id"] == "p4") & (m1["sample_idx"] == 6), "correct"] = True  # past the first 4
    out, _ = beyond_metrics.split_rows(M2, m1, CFG, n_options=0)
    assert out["support"]["sample"]["all"]["never"] == 1  # p4 is still outside M1's support at n = 4


def test_guessing_baseline_flags_on_a_five_option_task():
    c = [16, 16, 16, 8, 2, 1, 1, 1, 1, 1]
    samples = {f"q{i}": [j < ci for j in range(16)] for i, ci in enumerate(c)}
    df = _table(1, {p: True for p in samples}, samples)
    assert beyond_metrics.answer_options("csqa") == 5 and beyond_metrics.answer_options("math") == 0
    out, rows = beyond_metrics.split_rows(df, None, replace(CFG, iteration=1), n_options=5)
    assert _value(rows, "guess_pass@k", k=16)["value"] == pytest.approx(1 - 0.8 ** 16)  # about 0.97
    assert _value(rows, "pass@k_curve", k=1)["value"] == pytest.approx(63 / 160)
    assert _value(rows, "pass@k_uninformative", k=1)["value"] == 0.0  # 0.39 > 0.2 + 0.05
    assert _value(rows, "pass@k_uninformative", k=16)["value"] == 1.0  # 1.0 <= 0.97 + 0.05
    assert 16 in out["guess"]["uninformative_ks"] and 1 not in out["guess"]["uninformative_ks"]


def test_kl_and_token_entropy_from_two_model_folders_by_hand(tmp_path):
    """The evaluate stage's KL(M_t || M1): two bigram transformers (test_beyond) saved as a run's model folders,
    loaded the way the stage loads them; every log-likelihood is a sum of table entries."""
    tb = _sibling("test_beyond")
    WORDS, _bigram_model, _hand, _tokenizer = tb.WORDS, tb._bigram_model, tb._hand, tb._tokenizer

    rng = np.random.default_rng(5)
    tables = {"t": rng.normal(0, 1.5, (len(WORDS), len(WORDS))), "1": rng.normal(0, 1.5, (len(WORDS), len(WORDS)))}
    folders = {}
    for name, table in tables.items():
        folders[name] = tmp_path / f"m{name}"
        _bigram_model(table).save_pretrained(folders[name])
        _tokenizer().save_pretrained(folders[name])
    ids = {w: i for i, w in enumerate(WORDS)}
    responses = {"p1": [("a", "b c", "stop"), ("a", "c", "length"), ("a", "d d", "stop")],
                 "p2": [("b", "a b c", "length"), ("b", "d", "stop"), ("b", "c", "stop")]}
    rows = [dict(problem_id=pid, decoding="sample", sample_idx=k, prompt=p, response=r, finish_reason=f)
            for pid, rs in responses.items() for k, (p, r, f) in enumerate(rs)]
    cfg = replace(CFG, score_samples=2, score_device="cpu")  # the first 2 responses of each problem
    out, rows_out, _ = beyond_metrics.model_rows(pd.DataFrame(rows), folders["t"], folders["1"], cfg, 1.0)
    ratio, ent = {}, {}
    for pid, rs in responses.items():
        for p, r, f in rs[:2]:
            resp = [ids[w] for w in r.split()] + ([ids["<eos>"]] if f == "stop" else [])
            lt, h = _hand(tables["t"], [ids[p]], resp)
            l1, _ = _hand(tables["1"], [ids[p]], resp)
            ratio.setdefault(pid, []).append(sum(lt) - sum(l1))
            ent.setdefault(pid, []).extend(h)
    kl = _value(rows_out, "kl_from_m1")
    assert kl["value"] == pytest.approx(np.mean([np.mean(v) for v in ratio.values()]), abs=1e-4) and kl["n"] == 2
    assert _value(rows_out, "token_entropy")["value"] == pytest.approx(np.mean([np.mean(v) for v in ent.values()]),
                                                                        abs=1e-4)
    assert out["responses"] == 4 and out["temperature"] == 1.0
    # M1 scored against itself: no KL row; without a model folder: a note, no rows
    assert [r["metric"] for r in beyond_metrics.model_rows(pd.DataFrame(rows), folders["t"], None, cfg, 1.0)[1]] \
        == ["token_entropy"]
    note, none, _ = beyond_metrics.model_rows(pd.DataFrame(rows), tmp_path / "nowhere", None, cfg, 1.0)
    assert none == [] and "no model folder" in note["note"]


def test_the_deep_subset_is_level_balanced_and_fixed():
    problems = [{"id": f"a{i}", "level": 1} for i in range(10)] + [{"id": f"b{i}", "level": 2} for i in range(3)] \
        + [{"id": f"c{i}", "level": 3} for i in range(10)]
    chosen = deep.subset(problems, 10)
    levels = pd.Series([p["level"] for p in chosen]).value_counts().to_dict()
    assert levels == {1: 4, 2: 3, 3: 3} or levels == {1: 4, 3: 3, 2: 3}  # level 2 gives all it has
    assert deep.subset(problems, 10) == chosen and len(deep.subset(problems, 100)) == 23
    assert deep.subset(problems, 10, seed=1) != chosen and deep.subset(problems, 0) == []


def test_the_deep_section_and_the_new_evaluate_fields_are_checked(tmp_path):
    def recipe(text):
        p = tmp_path / "r.yaml"
        p.write_text("name: r\n" + text)
        return p

    for text, why in (("deep: {problem: 3}", r"section 'deep': unknown key 'problem' \(did you mean 'problems'\?\)"),
                      ("deep: {samples: 0}", "'samples' must be >= 1"),
                      ("deep: {seed: 3}", "section 'deep': 'seed' is set at the top level"),
                      ("evaluate: {taus: [0.0]}", r"'taus' must be a non-empty list of shares in \(0, 1\]"),
                      ("evaluate: {guess_options: 1}", "'guess_options' must be 0"),
                      ("evaluate: {answer_missing: skip}",
                       "'answer_missing' must be one of: category, drop, distinct")):
        with pytest.raises(RecipeError, match=why):
            config.load_recipe(recipe(text))
    # the deep evaluation changes no stage of the loop: the run keeps its hash
    assert config.load_recipe(recipe("deep: {problems: 5}")).digest() == config.load_recipe(recipe("")).digest()


def _figure_table() -> pd.DataFrame:
    """test_plots' hand-made table with beyond rows for two runs: curves (loop and deep), k*, guessing flags,
    the ledger, answer entropy and KL."""
    base = _sibling("test_plots")._table()
    rows = []
    for par in ("sft", "dpo"):
        for t in (1, 2, 3):
            def add(metric, subset, k, v, n=50, split="test", par=par, t=t):
                rows.append(dict(run=f"study/{par}", task="csqa", model="organism", paradigm=par, iteration=t,
                                 split=split, metric=metric, subset=subset, k=k, value=v, ci_low=None, ci_high=None,
                                 n=n))
            for k in (1, 2, 4, 8):
                add("deep_pass@k_curve", "all", k, min(1.0, 0.3 + 0.1 * k - 0.02 * t))
                add("deep_guess_pass@k", "all", k, 1 - 0.8 ** k)
                add("deep_pass@k_uninformative", "all", k, float(k == 8))
            add("answer_entropy", "solved", None, 1.0 - 0.1 * t)
            add("answer_entropy", "unsolved", None, 1.5 - 0.1 * t)
            if t >= 2:
                add("kl_from_m1", "all", None, 0.05 * t)
                add("deep_crossover_k", "all", 8, 4.0 if t == 2 else None)
                for cls, v in (("preserved", 0.5), ("lost", 0.1), ("gained", 0.15), ("never", 0.25)):
                    add(f"support_greedy:{cls}", "all", None, v)
                    add(f"support_sample:{cls}", "all", 4, v)
                    add(f"deep_support_sample:{cls}", "all", 8, v)
    extra = pd.DataFrame(rows)
    best = (base["iteration"] == 2) & (base["metric"] == "pass@1") & (base["split"] == "test")
    base.loc[best, "value"] = 0.9  # M_t* = M2, M_T = M3
    out = pd.concat([base.assign(task="csqa"), extra], ignore_index=True)
    flags = out[(out["metric"] == "pass@k") & (out["k"] == 4)].assign(metric="pass@k_uninformative", value=1.0)
    return pd.concat([out, flags], ignore_index=True)


def test_beyond_figure_marks_the_crossover_guessing_and_the_ledger():
    table = _figure_table()
    fig = plots.beyond_reach(table)
    gids = [a.get_gid() or "" for ax in fig.axes for a in ax.get_children()]
    assert "crossover:2" in gids and "kstar:3" in gids  # M_t* = M2's k* = 4 drawn; M_T = M3 has none up to 8
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == "crossover:2"]
    assert len(lines) == 2 and {float(ln.get_xdata()[0]) for ln in lines} == {4.0}  # a run each
    marks = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == "uninformative"]
    assert len(marks) == 6 and all(set(ln.get_xdata()) == {8} for ln in marks)  # M1, M2, M3 of each run
    texts = [a.get_text() for ax in fig.axes for a in ax.texts if (a.get_gid() or "") == "kstar:3"]
    assert texts and all("no crossover up to k = 8" in x for x in texts)
    bars = [p for ax in fig.axes for p in ax.patches if (p.get_gid() or "").startswith("ledger:")]
    assert {p.get_gid() for p in bars} == {"ledger:preserved", "ledger:lost", "ledger:gained", "ledger:never"}
    heights = sorted({round(p.get_height(), 6) for p in bars})
    assert heights == [10.0, 15.0, 25.0, 50.0]
    for ax in fig.axes:
        if ax.get_visible() and ax.get_title():
            assert ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)
    dash = plots.reversal_dashboard(table)
    kl = [ln for ax in dash.axes for ln in ax.get_lines() if ln.get_gid() == "paradigm:dpo"
          and "KL" in ax.get_ylabel()]
    assert kl and list(kl[0].get_ydata()) == pytest.approx([0.10, 0.15])
    assert any(ln.get_gid() == "uninformative" for ax in dash.axes for ln in ax.get_lines())
    entropy = [ln for ax in dash.axes for ln in ax.get_lines() if ax.get_ylabel() == "final-answer entropy (nats)"
               and ln.get_gid() == "paradigm:sft"]
    assert sorted(ln.get_linestyle() for ln in entropy) == ["-", "--"]  # solved solid, unsolved dashed
    plt.close(dash)


# ---------------------------------------------------------------------------------------------------------
# The tiny run (slow: the tiny_run fixture).

@pytest.mark.slow
def test_tiny_run_rows_of_every_iteration(tiny_run):
    table = metrics.collect(tiny_run)
    test = table[table["split"] == "test"]
    for t in (1, 2):
        it = test[test["iteration"] == t]
        assert sorted(it.loc[it["metric"] == "pass@k_curve", "k"]) == [1, 2, 4, 5]  # n_eval_samples 5
        assert {f"cover@{tau:g}" for tau in (0.1, 0.25, 0.5, 0.75, 0.9)} <= set(it["metric"])
        assert set(it.loc[it["metric"] == "answer_entropy", "subset"]) == {"solved", "unsolved", "all"}
        assert it.loc[it["metric"] == "token_entropy", "value"].notna().all()
    it = test[test["iteration"] == 2]
    assert it.loc[it["metric"] == "kl_from_m1", "value"].notna().all()
    assert len(it[it["metric"] == "crossover_k"]) == 1 and (it.loc[it["metric"] == "crossover_k", "k"] == 5).all()
    assert not table["metric"].str.contains("guess|uninformative").any()  # arith: open answers
    # the greedy ledger is the paper's transition sets: gained is IS(t), lost the lost set
    for cls, paper in (("gained", "set:improved"), ("lost", "set:lost"), ("preserved", "set:stable_correct")):
        share = it[(it["metric"] == f"support_greedy:{cls}") & (it["subset"] == "all")].iloc[0]
        count = it[(it["metric"] == paper) & (it["subset"] == "all")]["value"].iloc[0]
        assert round(share["value"] * share["n"]) == count
    for decoding in ("greedy", "sample"):
        shares = it[it["metric"].str.startswith(f"support_{decoding}:") & (it["subset"] == "all")]["value"]
        assert len(shares) == 4 and shares.sum() == pytest.approx(1.0)
    # the explorer's ledger of each problem agrees with the table's counts
    sampled = it[it["metric"].str.startswith("support_sample:") & (it["subset"] == "all")]
    ids = sorted(Run(tiny_run).greedy_correct(1).index)
    classes = pd.Series([explore.problem_ledger(tiny_run, pid).set_index("iteration").at[2, "support_sample"]
                         for pid in ids]).value_counts()
    for r in sampled.itertuples():
        assert classes.get(r.metric.split(":")[1], 0) == round(r.value * r.n)


@pytest.mark.slow
def test_tiny_run_deep_evaluation_is_recorded_and_reported(tiny_run):
    from selfimprove import verify
    from selfimprove.data import load_split

    paths = artifacts.RunPaths(tiny_run)
    manifest = json.loads(paths.manifest.read_text())
    assert sorted(manifest["deep"]) == ["1/deep", "2/deep"]
    for t in (1, 2):
        st = manifest["deep"][f"{t}/deep"]
        assert st["state"] == "done" and list(st["outputs"]) == [f"iter_{t}/deep_test.parquet"]
        assert artifacts.sha256(paths.deep_samples(t)) == st["outputs"][f"iter_{t}/deep_test.parquet"]
        df = pd.read_parquet(paths.deep_samples(t))
        assert set(df["decoding"]) == {"sample"} and (df.groupby("problem_id").size() == 8).all()  # tiny: 10 x 8
        assert df.groupby("problem_id")["level"].first().value_counts().to_dict() == {1: 5, 2: 5}
        again = verify.grade_table(df, load_split(tiny_run, "test"), "arith")  # the verify stage's grades
        assert again["correct"].tolist() == df["correct"].tolist()
    a, b = pd.read_parquet(paths.deep_samples(1)), pd.read_parquet(paths.deep_samples(2))
    assert a["problem_id"].tolist() == b["problem_id"].tolist()  # the same problems for every model
    m = Run(tiny_run).deep_metrics()
    assert m["roles"] == {"M1": 1, "best": 2, "last": 2} and m["problems"] == 10 and m["samples"] == 8
    table = metrics.collect(tiny_run)
    d = table[table["metric"].str.startswith("deep_")]
    assert sorted(d.loc[(d["metric"] == "deep_pass@k_curve") & (d["iteration"] == 1), "k"]) == [1, 2, 4, 8]
    diff = d[(d["metric"] == "deep_pass@k_diff") & (d["k"] == 8)].iloc[0]
    pn = m["comparisons"]["2"]["pass@n"]
    assert diff["value"] == pytest.approx(pn["diff"]) and [diff["ci_low"], diff["ci_high"]] == pn["ci"]
    assert len(d[d["metric"] == "deep_crossover_k"]) == 1
    shares = d[d["metric"].str.startswith("deep_support_sample:") & (d["subset"] == "all")]["value"]
    assert shares.sum() == pytest.approx(1.0)
    # the report: beside the verdict, and the figure (a single run draws them all)
    text = (paths.report / "beyond.md").read_text()
    assert "| M2 |" in text and "Deep evaluation" in text and "KL(M_t ‖ M1)" in text
    assert (paths.report / "beyond_reach.png").stat().st_size > 10_000
    assert json.loads((paths.report / "verdict.json").read_text())["label"] in ("reversal", "progress",
                                                                                "regression", "no gain")
    assert "Beyond the paper" in report.beyond_markdown(Run(tiny_run))
    # its time: the deep sampling's wall and model-compute seconds, beside the loop's stages
    deep_time = report.time_by_stage([tiny_run])["kinds"]["deep"]
    assert deep_time["stages"] == 2 and 0 < deep_time["compute_s"] <= deep_time["wall_s"]
    assert "| 2/deep |" in report.timing_table(artifacts.Manifest.load(paths))
    # resumed: nothing is sampled again
    lines = []
    cfg = config.load_recipe(pipeline.RECIPES / "tiny.yaml")
    deep.run(cfg, paths, artifacts.Manifest.load(paths), [], lines.append)
    assert lines == ["  [1/deep] done, kept", "  [2/deep] done, kept"]


def test_measures_of_a_set_take_as_many_samples_for_m1_as_for_later_iterates():
    """M1 draws 8 here (as sample.m1_eval_samples lets it), later iterates 4: cover@tau and the answers'
    diversity take M1's first 4, while the pass@k curve takes all 8 (unbiased for every k up to n)."""
    rows = [{"problem_id": "p", "level": 1, "decoding": "sample", "sample_idx": i, "correct": i < 4,
             "extracted": "7" if i < 4 else str(i), "status": "ok"} for i in range(8)]
    df = pd.DataFrame(rows)
    whole, _ = beyond_metrics.split_rows(df, None, CFG, 0)
    four, _ = beyond_metrics.split_rows(df, None, CFG, 0, set_samples=4)
    assert whole["cover"]["0.75"] == 0.0 and four["cover"]["0.75"] == 1.0  # 4 of 8 correct, 4 of 4
    assert four["pass@k_curve"] == whole["pass@k_curve"] and max(whole["pass@k_curve"]) == 8
