"""Real-task loaders (selfimprove/tasks.py), offline: every format normalises to problem rows, MATH's filters and
GSM8K's OOD set work, local JSON/JSONL/Parquet files and local copies of hub repositories load, the Hub being
unreachable fails at once with the recipe lines to use instead, a malformed row is named, and each task's gold
solutions, graded by its grader, come out correct. Fixtures are written by us in each dataset's own format."""

import hashlib
import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest

from selfimprove import cli, config, data, pipeline, tasks, verify
from selfimprove.artifacts import RunPaths

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
FILES = {"gsm8k": ("gsm8k.jsonl", "gsm8k_test.jsonl"), "math": ("math.jsonl", "math_test.jsonl"),
         "csqa": ("commonsense_qa.jsonl", "commonsense_qa.jsonl"), "mbpp": ("mbpp.jsonl", "mbpp.jsonl")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("datasets_cache"))


def local(task: str, cache: str, **kw) -> tasks.DataConfig:
    train, test = FILES[task]
    files = {"train": str(FIXTURES / train), "test": str(FIXTURES / test)}
    if task == "gsm8k":
        files["ood"] = str(FIXTURES / "math_test.jsonl")
    return tasks.DataConfig(cache_dir=cache, **{**files, **kw})


@pytest.fixture(scope="module")
def loaded(cache) -> dict[str, dict[str, list[dict]]]:
    return {task: tasks.load_problems(task, local(task, cache)) for task in tasks.LOADERS}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_registry_matches_the_graders_and_the_recipe_tasks():
    from selfimprove.grading import GRADERS

    assert set(tasks.LOADERS) <= set(GRADERS) and set(tasks.LOADERS) == set(config.TASKS) - {"arith"}
    assert set(tasks.PROMPTS) == set(tasks.LOADERS)
    assert tuple(tasks.TASKS_BY_NAME) == config.TASKS
    for name, t in tasks.TASKS_BY_NAME.items():
        assert t.name == name and t.grader is GRADERS[name] and t.max_new_tokens > 0 and t.gold_fields
        assert (t.loader is None) == (name == "arith") and bool(t.prompt) == (name != "arith")
    assert tasks.TASKS_BY_NAME["arith"].render({"question": "Q?"}) == "Q?"
    assert tasks.TASKS_BY_NAME["math"].render({"problem": " 1+1? "}).startswith("1+1?\n\nPlease reason")
    with pytest.raises(KeyError, match="unknown task 'gsm'"):
        tasks.task_of("gsm")


def test_gsm8k_rows(loaded):
    split = loaded["gsm8k"]
    assert [len(split[s]) for s in ("train", "test")] == [12, 4]
    first = split["train"][0]
    assert first["id"] == "gsm8k-train-00000" and first["task"] == "gsm8k" and first["level"] is None
    assert first["answer"] == "12" and first["solutions"] == [json.loads(
        (FIXTURES / "gsm8k.jsonl").read_text().splitlines()[0])["answer"]]  # calculator notes kept (tasks.py)
    assert first["question"].startswith(first["problem"]) and first["problem"].startswith("A baker makes 24")
    assert split["test"][0]["answer"] == "1475"  # "#### 1,475": thousands separators dropped
    assert len({r["id"] for r in split["train"]}) == 12


def test_math_rows_levels_and_subjects(loaded):
    rows = {r["problem"]: r for r in loaded["math"]["test"]}
    assert len(rows) == 9
    circle = next(r for p, r in rows.items() if p.startswith("A circle"))
    assert circle["level"] is None and circle["subject"] == "geometry"  # "Level ?" as published for a few rows
    books = next(r for p, r in rows.items() if "books" in p)
    assert books["level"] == 5 and books["subject"] == "counting_and_probability" and books["answer"] == "15"
    assert books["id"] == "math-test-counting_and_probability-0000"
    assert {r["level"] for r in rows.values()} == {1, 2, 3, 4, 5, None}
    assert next(r for p, r in rows.items() if p.startswith("Simplify"))["answer"] == "x + 3"


def test_math_filters_keep_ids(cache, loaded):
    every = {r["id"]: r for r in loaded["math"]["test"]}
    kept = tasks.load_problems("math", local("math", cache, subjects=["algebra", "precalculus"], levels=[1, 5]))
    got = kept["test"]
    assert {(r["subject"], r["level"]) for r in got} == {("algebra", 1), ("algebra", 5), ("precalculus", 5)}
    assert all(every[r["id"]] == r for r in got)  # the same rows under the same ids as unfiltered


def test_gsm8k_ood_is_math_algebra(loaded):
    ood = loaded["gsm8k"]["ood"]
    assert len(ood) == 4 and {r["subject"] for r in ood} == {"algebra"}  # paper §5.3
    assert {r["task"] for r in ood} == {"math"} and {r["level"] for r in ood} == {1, 2, 3, 5}
    assert all("\\boxed{}" in r["question"] for r in ood) and all(r["id"].startswith("math-ood-algebra-") for r in ood)
    assert tasks.plan("gsm8k", tasks.DataConfig(revision="abc"))[2] == tasks.SplitPlan(
        "ood", "math", "test", "EleutherAI/hendrycks_math", ("algebra",), ("algebra",), 0, "")


def test_default_splits_and_sources():
    """CSQA's labelled validation split is its test set (the test labels are hidden); only GSM8K has an OOD set
    by default."""
    plans = {t: {p.split: p for p in tasks.plan(t, tasks.DataConfig())} for t in tasks.LOADERS}
    assert plans["csqa"]["test"].spec == "validation" and plans["csqa"]["test"].source == "tau/commonsense_qa"
    assert plans["gsm8k"]["train"].configs == ("main",) and plans["mbpp"]["test"].configs == ("full",)
    assert plans["math"]["train"].configs == tasks.MATH_SUBJECTS
    assert [set(p) for p in plans.values()] == [{"train", "test", "ood"}] + [{"train", "test"}] * 3
    with pytest.raises(tasks.TaskDataError, match="filter MATH rows; task csqa has none"):
        tasks.plan("csqa", tasks.DataConfig(levels=[1]))
    with pytest.raises(tasks.TaskDataError, match="no OOD set by default"):
        tasks.plan("mbpp", tasks.DataConfig(ood_task="math"))


def test_csqa_rows(loaded):
    row = loaded["csqa"]["test"][0]
    assert row["id"] == "fixture0000" and row["answer"] == "B" and row["level"] is None
    assert row["choices"] == {"label": list("ABCDE"), "text": ["library", "nightstand", "school", "bookstore",
                                                               "desk at work"]}
    assert "(B) nightstand" in row["question"] and "The answer is (X)" in row["question"]


def test_mbpp_rows_full_and_sanitized(loaded, tmp_path, cache):
    row = loaded["mbpp"]["train"][0]
    assert row["id"] == "mbpp-601" and row["tests"][0] == "assert max_of_two(3, 7) == 7" and row["setup"] == ""
    assert row["answer"].startswith("def max_of_two") and row["solutions"][0].startswith("```python\n")
    sanitized = {"source_file": "x.py", "task_id": 2, "prompt": "Write a function to add two numbers.",
                 "code": "def add(a, b):\n    return a + b", "test_imports": ["import math"],
                 "test_list": ["assert add(1, 2) == 3"]}
    path = _jsonl(tmp_path / "mbpp_sanitized.jsonl", [sanitized])
    (got,) = tasks.load_problems("mbpp", tasks.DataConfig(train=str(path), test=str(path), cache_dir=cache))["test"]
    assert got["id"] == "mbpp-2" and got["setup"] == "import math" and got["problem"] == sanitized["prompt"]


def test_json_jsonl_parquet_folders_and_globs_load_alike(tmp_path, cache, loaded):
    rows = [json.loads(x) for x in (FIXTURES / "commonsense_qa.jsonl").read_text().splitlines()]
    (tmp_path / "csqa.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "csqa.parquet")
    (tmp_path / "split").mkdir()
    pd.DataFrame(rows[:5]).to_parquet(tmp_path / "split" / "part-0.parquet")
    _jsonl(tmp_path / "split" / "part-1.jsonl", rows[5:])
    want = loaded["csqa"]["test"]
    for spec in ("csqa.json", "csqa.parquet", "split", "split/part-*"):
        cfg = tasks.DataConfig(train=str(tmp_path / spec), test=str(tmp_path / spec), cache_dir=cache)
        assert tasks.load_problems("csqa", cfg)["test"] == want, spec


def test_local_copy_of_a_hub_repository(tmp_path, cache, loaded):
    """`source: DIR` holding a dataset repository as `hf download` writes it: README configs, Parquet per split."""
    gsm, math_dir = tmp_path / "gsm8k", tmp_path / "hendrycks_math"
    (gsm / "main").mkdir(parents=True)
    for split, name in zip(("train", "test"), FILES["gsm8k"]):
        pd.read_json(FIXTURES / name, lines=True).to_parquet(gsm / "main" / f"{split}-00000-of-00001.parquet")
    (gsm / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: "
                                   "main/train-*\n  - split: test\n    path: main/test-*\n---\n")
    math_rows = pd.read_json(FIXTURES / "math_test.jsonl", lines=True)
    readme = ["---", "configs:"]
    for subject in tasks.MATH_SUBJECTS:
        (math_dir / subject).mkdir(parents=True)
        part = math_rows[math_rows["type"].str.lower().str.replace(" & ", "_and_").str.replace(" ", "_") == subject]
        part.to_parquet(math_dir / subject / "test-00000-of-00001.parquet")
        readme += [f"- config_name: {subject}", "  data_files:", "  - split: test", f"    path: {subject}/test-*"]
    (math_dir / "README.md").write_text("\n".join(readme + ["---", ""]))
    got = tasks.load_problems("gsm8k", tasks.DataConfig(source=str(gsm), ood_source=str(math_dir), cache_dir=cache))
    for split in ("train", "test"):
        assert got[split] == loaded["gsm8k"][split]
    assert [r["problem"] for r in got["ood"]] == [r["problem"] for r in loaded["gsm8k"]["ood"]]


def test_limits_take_a_stable_nested_subset(cache):
    small = tasks.load_problems("mbpp", local("mbpp", cache, limit_train=4, limit_test=7))
    again = tasks.load_problems("mbpp", local("mbpp", cache, limit_train=4, limit_test=7))
    assert len(small["train"]) == 4 and len(small["test"]) == 7 and small == again
    assert {r["id"] for r in small["train"]} < {r["id"] for r in small["test"]}
    ids = [r["id"] for r in small["test"]]
    assert ids == sorted(ids, key=lambda i: int(i.split("-")[1]))  # the file's order is kept


def test_offline_error_names_the_dataset_and_the_recipe_lines(monkeypatch, tmp_path):
    monkeypatch.setattr(tasks, "hub_reachable", lambda: False)  # as on a machine without network
    t0 = time.time()
    with pytest.raises(tasks.TaskDataError) as e:
        tasks.load_problems("gsm8k", tasks.DataConfig(cache_dir=str(tmp_path)))
    assert time.time() - t0 < 10  # no retries against an unreachable Hub
    msg = str(e.value)
    assert "openai/gsm8k (main, split train)" in msg and "cannot be reached" in msg
    for line in ("data:", "  train: /path/to/gsm8k_train.jsonl", "  test:  /path/to/gsm8k_test.jsonl",
                 "  ood:   /path/to/math_ood.jsonl", "hf download openai/gsm8k", "EleutherAI/hendrycks_math"):
        assert line in msg, line
    assert "answer (a worked solution ending in '#### <number>')" in msg
    # The OOD source is named when it is the one that fails.
    with pytest.raises(tasks.TaskDataError, match=r"math data EleutherAI/hendrycks_math \(algebra, split test\)"):
        tasks.load_problems("gsm8k", local("gsm8k", str(tmp_path), ood=""))
    assert cli.main(["data", "csqa", "--out", str(tmp_path / "out"), "--set", f"cache_dir={tmp_path}"]) == 2


def test_malformed_rows_name_file_row_and_field(tmp_path, cache):
    good = {"question": "q", "answer": "1 + 1 = 2\n#### 2"}
    cases = [({"question": "q", "answer": "no marker"}, "row 2: field 'answer' has no '#### n'"),
             ({"question": "q"}, "row 2: field 'answer' must be str, got None"),
             ({"question": 7, "answer": "#### 3"}, "row 2: field 'question' must be str")]
    for bad, message in cases:
        path = _jsonl(tmp_path / "gsm8k_train.jsonl", [good, bad])
        with pytest.raises(tasks.TaskDataError, match=re.escape(f"{path} {message}")):
            tasks.load_problems("gsm8k", tasks.DataConfig(train=str(path), test=str(path), ood=str(path),
                                                          cache_dir=cache))
    (tmp_path / "broken.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": oops}\n')
    with pytest.raises(tasks.TaskDataError, match=r"broken.jsonl: cannot be read as json"):
        tasks.load_problems("gsm8k", local("gsm8k", cache, train=str(tmp_path / "broken.jsonl")))
    with pytest.raises(tasks.TaskDataError, match="data file not found"):
        tasks.load_problems("gsm8k", local("gsm8k", cache, train=str(tmp_path / "missing.jsonl")))
    unlabelled = json.loads((FIXTURES / "commonsense_qa.jsonl").read_text().splitlines()[0]) | {"answerKey": ""}
    path = _jsonl(tmp_path / "csqa_test.jsonl", [unlabelled])
    with pytest.raises(tasks.TaskDataError, match="row 1: field 'answerKey' is empty.*validation split"):
        tasks.load_problems("csqa", local("csqa", cache, test=str(path)))
    path = _jsonl(tmp_path / "math_bad.jsonl", [{"problem": "p", "level": "hard", "type": "Algebra",
                                                  "solution": "$\\boxed{1}$"}])
    with pytest.raises(tasks.TaskDataError, match="row 1: field 'level' must be 'Level 1'..'Level 5'"):
        tasks.load_problems("math", local("math", cache, test=str(path)))
    path = _jsonl(tmp_path / "math_int.jsonl", [{"problem": "p", "level": "Level 1", "type": "Algebra",
                                                  "solution": "$\\boxed{3}$", "answer": 3}])
    with pytest.raises(tasks.TaskDataError, match="row 1: field 'answer' must be str, got 3"):
        tasks.load_problems("math", local("math", cache, test=str(path)))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(tasks.TaskDataError, match=r"empty.jsonl: an empty file, no rows"):
        tasks.load_problems("gsm8k", local("gsm8k", cache, train=str(tmp_path / "empty.jsonl")))


def test_prompts_ask_for_what_each_grader_reads(loaded):
    from selfimprove.grading import grade_one

    gsm, math_row = loaded["gsm8k"]["test"][0], loaded["math"]["test"][0]
    csqa, mbpp = loaded["csqa"]["test"][3], loaded["mbpp"]["test"][0]
    assert '"#### <number>"' in gsm["question"] and gsm["question"].startswith(gsm["problem"])
    assert "put your final answer within \\boxed{}" in math_row["question"]
    assert all(f"({lab}) {text}" in csqa["question"] for lab, text in zip(*csqa["choices"].values()))
    assert mbpp["question"].startswith("You are an expert Python programmer, and here is your task: " + mbpp["problem"])
    assert all(t in mbpp["question"] for t in mbpp["tests"]) and "```python" in mbpp["question"]
    # A response in exactly the asked-for form is read by the grader.
    assert grade_one("gsm8k", "Steps.\n#### 1475", gsm["answer"]).status == "correct"
    assert grade_one("math", "So $\\boxed{3}$.", math_row["answer"]).status == "correct"
    assert grade_one("csqa", "The answer is (A)", csqa["answer"]).status == "correct"


def test_gold_solutions_grade_correct(loaded):
    """Every split's gold responses (for gold SFT), graded by the grader of their rows: one batch per grader."""
    by_grader: dict[str, list[dict]] = {}
    for splits in loaded.values():
        for rows in splits.values():
            for r in rows:  # GSM8K's OOD rows are MATH rows, graded as MATH
                by_grader.setdefault(r["task"], []).append(r)
    assert set(by_grader) == set(tasks.LOADERS)
    for fmt, rows in by_grader.items():
        df = pd.DataFrame({"problem_id": [r["id"] for r in rows for _ in r["solutions"]],
                           "response": [s for r in rows for s in r["solutions"]]})
        graded = verify.grade_table(df, rows, fmt)
        assert len(graded) >= len(rows) and graded["correct"].all(), graded[~graded["correct"]].to_dict("records")


def test_write_problems_meets_the_problem_file_contract(tmp_path, cache):
    out = tmp_path / "problems"
    (out).mkdir()
    (out / "ood.jsonl").write_text("stale\n")
    written = tasks.write_problems("mbpp", local("mbpp", cache), out)
    assert [p.name for p in written] == ["train.jsonl", "test.jsonl"] and not (out / "ood.jsonl").exists()
    rows = data.load_jsonl(out / "test.jsonl")
    assert len(rows) == 12 and rows[0]["tests"] and rows[0]["task"] == "mbpp"
    info = json.loads((out / "config.json").read_text())
    assert info["task"] == "mbpp" and info["problems"] == {"train": 12, "test": 12}


def test_problems_with_unicode_line_separators_round_trip(tmp_path, cache):
    rows = [json.loads(x) for x in (FIXTURES / "gsm8k.jsonl").read_text().splitlines()]
    rows[1]["question"] = rows[1]["question"].replace(". ", ".\u2028", 1)  # a raw U+2028, valid in JSON
    train = _jsonl(tmp_path / "gsm8k_train.jsonl", rows)
    tasks.write_problems("gsm8k", local("gsm8k", cache, train=str(train)), tmp_path / "out")
    assert "\u2028" in data.load_jsonl(tmp_path / "out" / "train.jsonl")[1]["question"]


def test_recipe_data_section(tmp_path, cache):
    def recipe(text):
        (tmp_path / "r.yaml").write_text(text)
        return config.load_recipe(tmp_path / "r.yaml")

    train, test = (FIXTURES / f for f in FILES["gsm8k"])
    cfg = recipe(f"task: gsm8k\nmodel: some/model\ndata: {{train: {train}, test: {test}, "
                 f"ood: {FIXTURES / 'math_test.jsonl'}, levels: [1, 5], cache_dir: {cache}}}\n")
    assert cfg.data_config() == tasks.DataConfig(train=str(train), test=str(test), cache_dir=cache, levels=[1, 5],
                                                 ood=str(FIXTURES / "math_test.jsonl"))
    paths = RunPaths(tmp_path / "run")
    tasks.prepare_problems(cfg, paths)
    ood = data.load_split(paths.root, "ood")
    assert {r["level"] for r in ood} == {1, 5} and len(data.load_split(paths.root, "test")) == 4
    assert recipe("task: csqa\nmodel: m\n").digest() != recipe("task: csqa\nmodel: m\ndata: {limit_test: 5}\n").digest()
    # Without `model` and `data`, a recipe keeps the hash it had before they existed: earlier runs still resume.
    demo = config.load_recipe(pipeline.RECIPES / "demo.yaml")
    before = {k: v for k, v in demo.recipe().items() if k not in ("model", "data", "verdict", "deep")}
    assert demo.digest() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    for text, message in [("task: gsm8k\n", "task gsm8k needs 'model'"),
                          ("task: csqa\nmodel: m\ndata: {subjets: [algebra]}\n",
                           r"section 'data': unknown key 'subjets' \(did you mean 'subjects'\?\)"),
                          ("task: csqa\nmodel: m\ndata: {levels: [1]}\n", "filter MATH rows; task csqa has none"),
                          ("task: math\nmodel: m\ndata: {levels: [6]}\n", "'levels' must be MATH levels 1-5"),
                          ("data: {train: x.jsonl}\n", "arith's are set in organism.data")]:
        with pytest.raises(config.RecipeError, match=message):
            recipe(text)


def test_cli_data_writes_a_real_task(tmp_path, cache, capsys):
    train, test = (str(FIXTURES / f) for f in FILES["math"])
    out = tmp_path / "math"
    assert cli.main(["data", "math", "--train", train, "--test", test, "--out", str(out),
                     "--set", "subjects=[algebra]", "--set", f"cache_dir={cache}"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "train.jsonl"), str(out / "test.jsonl")]
    assert {r["subject"] for r in data.load_jsonl(out / "test.jsonl")} == {"algebra"}
    assert cli.main(["data", "arith", "--train", train]) == 2
