"""`selfimprove metrics` on a real run (the tiny recipe): the same numbers as the evaluate stage, the tidy
table, the verdict files, and the paradigm advice the pipeline logs before training."""

import json
import shutil
from dataclasses import asdict

import pandas as pd
import pytest

from selfimprove import artifacts, cli, metrics, pipeline, verdict
from selfimprove.runs import Run

pytestmark = pytest.mark.slow


def test_metrics_command_recomputes_what_the_evaluate_stage_wrote(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(pipeline.PACKAGE_ROOT)  # the stage's working directory: the same embedding cache
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("model", "notebooks"))
    paths = artifacts.RunPaths(run)
    staged = {t: json.loads(paths.metrics(t).read_text()) for t in (1, 2)}
    assert cli.main(["metrics", str(run)]) == 0
    out = capsys.readouterr().out
    for t in (1, 2):  # the evaluate stage and the command call the same functions
        assert json.loads(paths.metrics(t).read_text()) == staged[t]
    table = pd.read_parquet(paths.report / "metrics.parquet")
    assert list(table.columns) == metrics.TABLE_COLUMNS
    assert {"pass@1", "pass@k", "group_disparity", "distinct_n", "embedding_diversity", "distinct_equations",
            "m1_accuracy@N", "set:improved", "set:lost", "coverage_mean", "coverage_any"} <= set(table["metric"])
    p1 = table[(table["metric"] == "pass@1") & (table["subset"] == "all")]
    assert (p1["ci_low"] <= p1["value"]).all() and (p1["value"] <= p1["ci_high"]).all()
    v = json.loads((paths.report / "verdict.json").read_text())
    assert v["label"] in verdict.LABELS and v["line"].upper().startswith(v["label"].upper())
    assert "**Verdict: " in out and (paths.report / "verdict.md").exists()
    # M1's accuracy@N only goes to the samples it has (5 per test problem in the tiny recipe): N = 1, 2, 4
    assert sorted(table[table["metric"] == "m1_accuracy@N"]["k"].unique()) == [1, 2, 4]


def test_metrics_command_errors_name_the_problem(tiny_run, tmp_path, capsys):
    assert cli.main(["metrics", str(tmp_path)]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("model", "notebooks"))
    assert cli.main(["metrics", str(run), "--set", "diversity_per_problem=1"]) == 2
    assert "'diversity_per_problem' must be 0 (all responses) or >= 2" in capsys.readouterr().err
    assert cli.main(["metrics", str(run), "--threshold", "ood_dorp=0.1"]) == 2
    assert "unknown key 'ood_dorp' (did you mean 'ood_drop'?)" in capsys.readouterr().err


def test_evaluate_stage_records_and_pipeline_logs_the_paradigm_advice(tiny_run, organism_root):
    advice = json.loads(artifacts.RunPaths(tiny_run).metrics(1).read_text())["paradigm_advice"]
    assert advice["advice"] == ("DPO or SFT-DPO" if advice["coverage_mean"] > 0.5 else "SFT")
    lines = []
    pipeline.run("tiny", runs_root=tiny_run.parent, organism_root=organism_root, figures_dir=None, log=lines.append)
    logged = [line for line in lines if "paradigm advice" in line]
    assert len(logged) == 1 and f"coverage_mean {advice['coverage_mean']:.3f}" in logged[0]
    assert lines.index(logged[0]) < next(i for i, line in enumerate(lines) if "[2/train]" in line)
    assert any("**Verdict: " in line for line in lines)


def test_report_and_metrics_use_the_runs_own_thresholds(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(pipeline.PACKAGE_ROOT)
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("model", "notebooks"))
    paths = artifacts.RunPaths(run)

    def recorded():
        return json.loads((paths.report / "verdict.json").read_text())["thresholds"]

    # --threshold: this command only
    assert cli.main(["metrics", str(run), "--threshold", "ood_drop=0.3"]) == 0
    assert recorded()["ood_drop"] == 0.3
    assert cli.main(["report", str(run)]) == 0  # back to the run's own: the defaults (no `verdict` section)
    assert recorded() == asdict(verdict.Thresholds())
    # a recipe's `verdict` section, recorded in the manifest, is what `selfimprove report` judges with
    manifest = json.loads(paths.manifest.read_text())
    manifest["config"]["verdict"] = {"ood_drop": 0.2, "diversity_drop": 0.5}
    paths.manifest.write_text(json.dumps(manifest))
    assert cli.main(["report", str(run)]) == 0
    assert recorded()["ood_drop"] == 0.2 and recorded()["diversity_drop"] == 0.5
    capsys.readouterr()


def test_answers_changed_compares_greedy_answers_of_consecutive_iterates(tiny_run):
    run = Run(tiny_run)
    a, b = run.greedy_answers(1), run.greedy_answers(2)
    assert len(a) == len(b) > 0 and a.index.equals(b.index)
    expected = float((a.fillna("?") != b.fillna("?")).mean())
    assert run.answers_changed(2) == pytest.approx(expected)
    assert run.answers_changed(1) is None
    assert "answers changed" in (tiny_run / "report" / "summary.md").read_text()
