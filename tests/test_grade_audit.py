"""`selfimprove audit` passes on every shipped dataset fixture and on the arith data, fails on a planted gold
bug, and reports a run's rates; `selfimprove grade` grades every valid line and names the malformed ones."""

import json
from pathlib import Path

import pandas as pd
import pytest

from selfimprove import arith, cli
from selfimprove.grading import audit

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
DATASETS = {"gsm8k": "gsm8k.jsonl", "math": "math.jsonl", "csqa": "commonsense_qa.jsonl", "mbpp": "mbpp.jsonl"}


@pytest.mark.parametrize("task", sorted(DATASETS))
def test_audit_passes_on_every_fixture(task, capsys):
    assert cli.main(["audit", "--task", task, "--data", str(FIXTURES / DATASETS[task])]) == 0
    out = capsys.readouterr().out
    rows = sum(1 for line in (FIXTURES / DATASETS[task]).read_text().splitlines() if line.strip())
    checks = rows if task == "mbpp" else 2 * rows
    assert f"{checks} checks, {checks} correct, 0 failed" in out


def test_fixtures_keep_the_hugging_face_fields():
    """Loaders for these datasets will read the published field names; the fixtures must carry exactly those."""
    fields = {"gsm8k": {"question", "answer"}, "math": {"problem", "level", "type", "solution"},
              "csqa": {"id", "question", "question_concept", "choices", "answerKey"},
              "mbpp": {"task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list"}}
    for task, name in DATASETS.items():
        rows = [json.loads(x) for x in (FIXTURES / name).read_text().splitlines()]
        assert len(rows) >= 10
        assert all(set(r) == fields[task] for r in rows), task


def test_audit_passes_on_the_arith_data():
    splits = arith.generate(arith.ArithConfig(n_train=200, n_test=50, n_ood=50))
    rows = [(r["id"], r) for split in splits.values() for r in split]
    table = audit.audit_rows("arith", rows)
    assert len(table) > len(rows)  # gold against itself and every solution
    assert (table["status"] == "correct").all(), table[table["status"] != "correct"]


def test_audit_finds_a_planted_gold_bug(tmp_path, capsys):
    rows = [{"problem": "p", "level": "Level 1", "type": "Algebra", "solution": r"so $\boxed{\frac{1}{2}}$",
             "answer": r"\frac{1}{3}"},  # an answer field that disagrees with its own solution
            {"problem": "q", "level": "Level 1", "type": "Algebra", "solution": r"$\boxed{4}$"}]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["audit", "--task", "math", "--data", str(path)]) == 1
    out = capsys.readouterr().out
    assert "4 checks, 3 correct, 1 failed" in out and "solution_vs_gold" in out and "math.jsonl:1" in out


def test_audit_finds_reference_code_that_fails_its_tests(tmp_path):
    row = {"task_id": 1, "text": "t", "code": "def f():\n    return 1", "test_list": ["assert f() == 2"],
           "test_setup_code": "", "challenge_test_list": []}
    table = audit.audit_rows("mbpp", [("mbpp.jsonl:1", row)])
    assert table["status"].tolist() == ["incorrect"]


def test_audit_names_a_row_without_its_answer(tmp_path, capsys):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "no final marker"}) + "\n")
    assert cli.main(["audit", "--task", "gsm8k", "--data", str(path)]) == 2
    assert "gsm8k.jsonl:1: field 'answer' has no '#### n'" in capsys.readouterr().err


def test_audit_refuses_a_file_that_is_not_jsonl_or_is_empty(tmp_path, capsys):
    parquet = tmp_path / "gsm8k.parquet"  # the dataset's Hub format, but the audit reads JSONL
    pd.read_json(FIXTURES / "gsm8k.jsonl", lines=True).to_parquet(parquet)
    assert cli.main(["audit", "--task", "gsm8k", "--data", str(parquet)]) == 2
    assert "gsm8k.parquet:1: not UTF-8 text" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert cli.main(["audit", "--task", "gsm8k", "--data", str(tmp_path / "empty.jsonl")]) == 2
    assert "empty.jsonl: no rows to audit" in capsys.readouterr().err
    assert cli.main(["audit", "--task", "gsm8k", "--data", str(tmp_path)]) == 2
    assert "is a folder, not a JSONL file" in capsys.readouterr().err


def test_run_rates_per_iteration(tmp_path, capsys, write_graded):
    for t, statuses in ((1, ["correct", "timeout", "no_answer", "no_answer"]), (2, ["correct", "error"])):
        d = tmp_path / f"iter_{t}"
        d.mkdir()
        n = len(statuses)
        write_graded(pd.DataFrame({"iteration": t, "split": "test", "problem_id": [f"p{i}" for i in range(n)],
                                   "decoding": "greedy", "sample_idx": 0, "response": "x", "status": statuses,
                                   "correct": [s == "correct" for s in statuses]}), d / "samples_test.parquet")
    pd.DataFrame({"response": ["x"]}).to_parquet(tmp_path / "iter_2" / "samples_ood.parquet")  # not graded yet
    rates = audit.run_rates(tmp_path)
    assert rates.to_dict("records") == [
        {"iteration": 1, "split": "test", "responses": 4, "timeout": 0.25, "no_answer": 0.5, "error": 0.0},
        {"iteration": 2, "split": "test", "responses": 2, "timeout": 0.0, "no_answer": 0.0, "error": 0.5}]
    assert cli.main(["audit", "--task", "arith", "--run", str(tmp_path)]) == 0
    assert "no_answer" in capsys.readouterr().out
    (tmp_path / "iter_2" / "graded_test.parquet").write_bytes(b"PAR1 cut short")
    assert cli.main(["audit", "--task", "arith", "--run", str(tmp_path)]) == 2
    assert "iter_2/graded_test.parquet: cannot be read, the file is damaged" in capsys.readouterr().err


def test_grade_command_grades_valid_lines_and_names_bad_ones(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join([
        json.dumps({"id": 1, "response": r"so \boxed{\dfrac{1}{2}}", "gold": "0.5"}),
        "{not json",
        json.dumps({"id": 3, "response": "no box", "gold": "2"}),
        json.dumps({"id": 4, "gold": "2"}),  # no response
        json.dumps({"id": 5, "response": r"\boxed{3}"}),  # no gold
        json.dumps({"id": 6, "response": r"\boxed{10^{10^{10^{10}}}}", "gold": "2"}),
    ]) + "\n")
    assert cli.main(["grade", "--task", "math", "--input", str(src), "--output", str(dst)]) == 1
    err = capsys.readouterr().err
    assert "in.jsonl:2: not valid JSON" in err and "in.jsonl:4: field 'response'" in err
    assert "in.jsonl:5: field 'gold'" in err
    out = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [(o["id"], o["status"]) for o in out] == [(1, "correct"), (3, "no_answer"), (6, "error")]
    assert out[0]["extracted"] == r"\dfrac{1}{2}" and out[0]["gold"] == "0.5"  # the input line is kept


def test_grade_command_names_a_line_that_is_not_utf8_and_grades_the_rest(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b'{"response": "#### 2", "gold": "2"}\n{"response": "caf\xe9", "gold": "2"}\n')
    assert cli.main(["grade", "--task", "gsm8k", "--input", str(src), "--output", str(dst)]) == 1
    assert "in.jsonl:2: not UTF-8 text" in capsys.readouterr().err
    assert [json.loads(x)["status"] for x in dst.read_text().splitlines()] == ["correct"]


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["--timeout-s", "0"], "argument --timeout-s: must be > 0, got 0.0"),
    (["--memory-mb", "100"], "argument --memory-mb: must be >= 256, got 100"),
])
def test_grade_command_refuses_bad_limits_before_reading(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["grade", "--task", "gsm8k", "--input", str(tmp_path / "in.jsonl"), "--output",
                  str(tmp_path / "out.jsonl"), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_grade_command_refuses_a_folder_as_input_or_output(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"response": "#### 2", "gold": "2"}) + "\n")
    assert cli.main(["grade", "--task", "gsm8k", "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "(it is a folder)" in capsys.readouterr().err
    assert cli.main(["grade", "--task", "gsm8k", "--input", str(src), "--output", str(tmp_path)]) == 2
    assert f"output {tmp_path} is a folder" in capsys.readouterr().err


def test_grade_command_mbpp(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"response": "```python\ndef f(x):\n    return math.floor(x)\n```",
                               "tests": ["assert f(2.5) == 2"], "setup": "import math"}) + "\n")
    assert cli.main(["grade", "--task", "mbpp", "--input", str(src), "--output", str(dst), "--timeout-s", "4"]) == 0
    assert json.loads(dst.read_text())["status"] == "correct"
