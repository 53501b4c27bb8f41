"""The arith grader, table grading, and the DPO pair builder."""

import pandas as pd
import pytest

from selfimprove import pairs, verify


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
