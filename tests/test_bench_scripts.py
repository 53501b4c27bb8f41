"""The bench scripts that the docs quote run on runs the package made (bench/demo_profile.py once called a
function that had moved to report.py, and nothing noticed)."""

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from selfimprove.artifacts import RunPaths

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_profile_reads_a_finished_run(tiny_run, tmp_path, capsys):
    result = _load("demo_profile").main([str(tiny_run), "--out", str(tmp_path / "profile.json")])
    assert result["wall_s"] > result["compute_s"] > 0
    assert json.loads((tmp_path / "profile.json").read_text())["wall_s"] == result["wall_s"]
    assert "| all |" in capsys.readouterr().out


def test_compare_runs_finds_equal_runs_equal_and_a_changed_number(tiny_run, tmp_path):
    bench = _load("compare_runs")
    same = bench.main([str(tiny_run), str(tiny_run), "--out", str(tmp_path / "same.json")])
    assert same["metrics"]["max_abs_diff"]["value"] == 0 and same["metrics"]["only_after"] == 0
    assert all(v["equal_on_common_columns"] for v in same["samples"].values()) and all(same["models"].values())
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    table = pd.read_csv(other / "report" / "metrics_long.csv")
    row = table["value"].first_valid_index()
    table.loc[row, "value"] = table.loc[row, "value"] + 0.25
    table.to_csv(other / "report" / "metrics_long.csv", index=False)
    changed = bench.main([str(tiny_run), str(other), "--out", str(tmp_path / "changed.json")])
    assert changed["metrics"]["max_abs_diff"]["value"] == pytest.approx(0.25)
    assert changed["metrics"]["metrics_differing"] == [table.loc[row, "metric"]]


def test_dpo_sweep_rebuilds_the_runs_pairs_and_sweeps_the_cap(tiny_run, tmp_path):
    """With the recipe's settings the sweep trains on the pairs that made the run's M2; a smaller cap on pairs
    per problem gives fewer (each result also has the run's M1 against the swept M2, per split)."""
    bench = _load("dpo_sweep")
    out = tmp_path / "sweep.jsonl"
    same = bench.main([str(tiny_run), "--name", "pytest-same", "--out", str(out)])
    capped = bench.main([str(tiny_run), "--name", "pytest-cap1", "--set", "max_pairs_per_problem=1", "--out", str(out)])
    assert same["pairs_as_run"] and same["pairs"] == len(pd.read_parquet(RunPaths(tiny_run).train_data(2)))
    assert not capped["pairs_as_run"] and 0 < capped["pairs"] < same["pairs"]
    assert {"test", "ood"} <= set(same) and [json.loads(x)["name"] for x in out.read_text().splitlines()] == \
        ["pytest-same", "pytest-cap1"]
