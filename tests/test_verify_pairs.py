"""The arith grader, table grading, and the DPO pair builder."""

import pandas as pd
import pytest

from selfimprove import data, pairs, verify


@pytest.mark.parametrize("response,gold,status,extracted", [
    ("3 * 4 = 12\n#### 12", "12", "correct", "12"),
    ("#### 012", "12", "correct", "12"),
    ("#### 13", "12", "incorrect", "13"),
    ("#### 12\nmore text #### 7", "7", "correct", "7"),  # the last marker counts
    ("3 * 4 = 12", "12", "no_answer", None),
    ("", "12", "no_answer", None),
    ("#### -3", "-3", "correct", "-3"),
    ("#### 12.5", "12", "incorrect", "12.5"),  # not read as 12
    ("#### 1,000", "1", "incorrect", "1,000"),
    ("#### 12.", "12", "correct", "12"),  # a sentence's period
])
def test_grade_arith(response, gold, status, extracted):
    assert verify.GRADERS["arith"](response, gold)[:2] == (status, extracted)


def _table(statuses_by_problem):
    rows = []
    for pid, statuses in statuses_by_problem.items():
        for i, st in enumerate(statuses):
            rows.append({"problem_id": pid, "level": 1, "prompt": f"q-{pid}", "decoding": "sample",
                         "sample_idx": i, "response": f"{pid}-r{i}", "status": st})
    return pd.DataFrame(rows)


def test_grade_table_adds_columns_and_keeps_rows():
    df = pd.DataFrame({"problem_id": ["a", "a", "b"], "response": ["#### 1", "#### 2", "nothing"]})
    problems = [{"id": "a", "answer": "1"}, {"id": "b", "answer": "5"}]
    out = verify.grade_table(df, problems, "arith")
    assert out["status"].tolist() == ["correct", "incorrect", "no_answer"]
    assert out["correct"].tolist() == [True, False, False]
    assert out["extracted"].tolist()[:2] == ["1", "2"] and pd.isna(out["extracted"].iloc[2])
    again = verify.grade_table(out, problems, "arith")  # idempotent: a rerun after a kill
    assert again.equals(out)


def test_grade_table_refuses_unknown_problem():
    df = pd.DataFrame({"problem_id": ["zzz"], "response": ["#### 1"]})
    with pytest.raises(ValueError, match="zzz"):
        verify.grade_table(df, [{"id": "a", "answer": "1"}], "arith")


def test_disjoint_pairs_use_each_response_once_and_respect_the_cap():
    df = _table({"p1": ["correct", "correct", "incorrect", "incorrect", "no_answer"],
                 "p2": ["correct"] * 4,  # no incorrect: no pair
                 "p3": ["incorrect"] * 4,  # no correct: no pair
                 "p4": ["correct", "incorrect", "timeout", "error"]})  # unknown correctness is left out
    out = pairs.make_pairs(df, rule="disjoint", max_pairs=4, seed=0)
    assert sorted(out["problem_id"].unique()) == ["p1", "p4"]
    p1 = out[out["problem_id"] == "p1"]
    assert len(p1) == 2  # min(2 correct, 3 incorrect)
    assert p1["chosen_idx"].is_unique and p1["rejected_idx"].is_unique
    assert set(p1["chosen_idx"]) == {0, 1} and set(p1["rejected_idx"]) <= {2, 3, 4}
    p4 = out[out["problem_id"] == "p4"]
    assert p4[["chosen_idx", "rejected_idx"]].values.tolist() == [[0, 1]]
    assert (out["prompt"] == "q-" + out["problem_id"]).all()
    capped = pairs.make_pairs(df, rule="disjoint", max_pairs=1, seed=0)
    assert capped.groupby("problem_id").size().max() == 1


def test_cross_pairs_are_distinct_and_capped():
    df = _table({"p": ["correct", "correct", "incorrect", "incorrect", "incorrect"]})
    out = pairs.make_pairs(df, rule="cross", max_pairs=5, seed=1)
    combos = list(zip(out["chosen_idx"], out["rejected_idx"]))
    assert len(combos) == 5 and len(set(combos)) == 5
    assert len(pairs.make_pairs(df, rule="cross", max_pairs=100, seed=1)) == 6


def test_pairs_are_seeded_and_ignore_greedy_rows():
    df = _table({f"p{i}": ["correct", "incorrect"] * 3 for i in range(5)})
    greedy = df.assign(decoding="greedy", status="correct")
    a = pairs.make_pairs(pd.concat([df, greedy]), seed=7)
    b = pairs.make_pairs(df, seed=7)
    assert a.equals(b)
    assert not pairs.make_pairs(df, seed=8).equals(b)


def test_empty_input_gives_empty_table_with_columns():
    out = pairs.make_pairs(_table({"p": ["correct"]}))
    assert out.empty and list(out.columns) == pairs.PAIR_COLUMNS


def test_grade_table_passes_csqa_choices_and_mbpp_tests():
    df = pd.DataFrame({"problem_id": ["q"], "response": ["river bank"]})
    problems = [{"id": "q", "answer": "B", "choices": {"label": ["A", "B"], "text": ["bank", "river bank"]}}]
    assert verify.grade_table(df, problems, "csqa")["status"].tolist() == ["correct"]
    df = pd.DataFrame({"problem_id": ["m"], "response": ["```python\ndef f():\n    return 2\n```"]})
    problems = [{"id": "m", "answer": "", "tests": ["assert f() == 2"], "setup": ""}]
    assert verify.grade_table(df, problems, "mbpp", timeout_s=5)["status"].tolist() == ["correct"]


def test_grade_table_grades_each_row_with_its_problems_task():
    # GSM8K's OOD split holds MATH problems: their answers are LaTeX and need the MATH grader
    problems = [{"id": "g", "question": "q", "answer": "5"},
                {"id": "m", "question": "q", "answer": "5\\sqrt{2}", "task": "math"}]
    df = pd.DataFrame({"problem_id": ["g", "m", "m"],
                       "response": ["so #### 5", "It is $\\boxed{5\\sqrt{2}}$.", "It is $\\boxed{5}$."]})
    out = verify.grade_table(df, problems, "gsm8k", workers=1)
    assert out["status"].tolist() == ["correct", "correct", "incorrect"]


def _sampled_run(tmp_path):
    """A run directory with problems and M1's sample tables as the sample stage writes them (no grades)."""
    import json

    from selfimprove import artifacts
    from selfimprove.sample import SAMPLE_COLUMNS

    paths = artifacts.RunPaths(tmp_path)
    answers = {"train": {f"t{i}": str(i) for i in range(6)}, "test": {"e0": "1", "e1": "2"}}
    for split, gold in answers.items():
        paths.problems(split).parent.mkdir(parents=True, exist_ok=True)
        paths.problems(split).write_text("".join(json.dumps({"id": pid, "question": "q", "answer": a, "level": 1})
                                                 + "\n" for pid, a in gold.items()))
        rows = []
        for pid, a in sorted(gold.items(), reverse=True):  # not sorted by problem: the join keeps this order
            decodings = [("sample", k) for k in range(4)] + ([("greedy", 0)] if split == "test" else [])
            for decoding, k in decodings:
                response = [f"#### {a}", "#### 99", "no marker", f"so #### {a}"][k] if decoding == "sample" else "x"
                rows.append({"iteration": 1, "split": split, "task": "arith", "problem_id": pid, "level": 1,
                             "decoding": decoding, "sample_idx": k, "prompt": f"q-{pid}", "response": response,
                             "n_tokens": 3, "finish_reason": "stop"})
        artifacts.write_parquet(pd.DataFrame(rows, columns=SAMPLE_COLUMNS), paths.samples(1, split))
    return paths


def test_verify_writes_only_graded_tables_and_leaves_the_samples_as_sampled(tmp_path):
    from selfimprove import artifacts, runs
    from selfimprove.config import VerifyConfig, build

    paths = _sampled_run(tmp_path)
    before = {p.name: artifacts.sha256(p) for p in paths.iter_dir(1).iterdir()}
    written = verify.run(build(VerifyConfig, {"run_dir": str(tmp_path), "iteration": 1, "iterations": 2}, "test"))
    assert written == [paths.graded(1, "train"), paths.graded(1, "test")]
    after = {p.name: artifacts.sha256(p) for p in paths.iter_dir(1).iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before  # the sample stage's hashes stay valid
    assert set(after) - set(before) == {"graded_train.parquet", "graded_test.parquet"}  # no train data, nothing else
    for split in ("train", "test"):
        grades = pd.read_parquet(paths.graded(1, split))
        assert list(grades.columns) == runs.GRADE_KEYS + runs.GRADE_COLUMNS
        samples = pd.read_parquet(paths.samples(1, split))
        expected = verify.grade_table(samples, data.load_split(tmp_path, split), "arith")
        pd.testing.assert_frame_equal(runs.Run(tmp_path).graded(1, split), expected)  # order and dtypes too
    assert runs.Run(tmp_path).graded(1, "test", columns=["problem_id", "correct"]).columns.tolist() == \
        ["problem_id", "correct"]


def test_graded_join_refuses_missing_or_stale_grades(tmp_path):
    from selfimprove import artifacts, runs
    from selfimprove.config import VerifyConfig, build

    paths = _sampled_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="graded_test.parquet does not exist"):
        runs.Run(tmp_path).graded(1, "test")
    verify.run(build(VerifyConfig, {"run_dir": str(tmp_path), "iteration": 1, "iterations": 2}, "test"))
    grades = pd.read_parquet(paths.graded(1, "test"))
    artifacts.write_parquet(grades.iloc[1:], paths.graded(1, "test"))  # a row's grade is missing
    with pytest.raises(runs.RunError, match="without a grade"):
        runs.Run(tmp_path).graded(1, "test")


@pytest.mark.parametrize("paradigm,t", [("dpo", 2), ("sft", 2), ("sft-dpo", 3)])
def test_train_builds_its_data_from_the_previous_models_graded_samples(tmp_path, paradigm, t):
    """M_t's data: pairs.py on M(t-1)'s graded train samples with the seed (seed, t - 1), as verify built it."""
    import shutil

    from selfimprove import train
    from selfimprove.config import TrainConfig, VerifyConfig, build, train_kind

    paths = _sampled_run(tmp_path / "r")
    verify.run(build(VerifyConfig, {"run_dir": str(paths.root), "iteration": 1, "iterations": 3}, "test"))
    if t == 3:  # M2's samples: the same tables, as iteration 2's
        paths.iter_dir(2).mkdir()
        for name in ("samples_train.parquet", "graded_train.parquet"):
            df = pd.read_parquet(paths.iter_dir(1) / name).assign(iteration=2)
            df.to_parquet(paths.iter_dir(2) / name, index=False)
        shutil.rmtree(paths.iter_dir(1))
    cfg = build(TrainConfig, {"run_dir": str(paths.root), "iteration": t, "iterations": 3, "paradigm": paradigm,
                              "seed": 3, "max_pairs_per_problem": 2, "sft_max_per_problem": 1}, "test")
    got = train.build_data(cfg, paths)
    graded = pd.read_parquet(paths.samples(t - 1, "train")).join(pd.read_parquet(paths.graded(t - 1, "train"))[
        ["extracted", "status", "correct"]])
    if train_kind(paradigm, t) == "sft":  # sft-dpo at t = 3
        want = pairs.make_sft_rows(graded, max_per_problem=1, dedup=True, seed=3000 + t - 1)
    else:
        want = pairs.make_pairs(graded, rule="disjoint", max_pairs=2, seed=3000 + t - 1)
    assert len(want) and set(want["problem_id"]) == {f"t{i}" for i in range(6)}
    pd.testing.assert_frame_equal(got, want)
    assert train.data_summary(got, "dpo", t) == {"kind": "dpo", "rows": len(want), "problems": 6,
                                                 "from_iteration": t - 1}
    with pytest.raises(train.TrainError, match=f"needs M{t}'s graded train samples"):
        train.build_data(build(TrainConfig, {**cfg.__dict__, "iteration": t + 1}, "test"), paths)


def test_data_building_keys_under_verify_say_where_they_went():
    from selfimprove.config import RecipeError
    from selfimprove.schema import RunConfig

    with pytest.raises(RecipeError, match="section 'verify': 'max_pairs_per_problem' is now set under 'train:'"):
        RunConfig(name="x", verify={"max_pairs_per_problem": 2})  # as the recipe is read, not when a stage runs
    assert RunConfig(name="x", train={"max_pairs_per_problem": 2}).stage("train", 2, "run").max_pairs_per_problem == 2
