"""The loop end to end with real parts: the tiny organism, papermill stage notebooks, TRL DPO, metrics,
the manifest, and resume after SIGKILL (README, 'What a run is')."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from selfimprove import artifacts, pipeline, stages
from selfimprove.config import RecipeError
from selfimprove.runs import Run

pytestmark = pytest.mark.slow
DESIGN_COLUMNS = ["iteration", "split", "task", "problem_id", "level", "decoding", "sample_idx", "prompt",
                  "response", "n_tokens", "finish_reason"]
GRADED_COLUMNS = ["iteration", "split", "problem_id", "decoding", "sample_idx", "extracted", "status", "correct"]


def _metrics(run_dir: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(run_dir.glob("iter_*/metrics.json"))}


def test_tiny_run_produces_every_artifact(tiny_run):
    paths = artifacts.RunPaths(tiny_run)
    manifest = json.loads(paths.manifest.read_text())
    assert set(manifest["stages"]) == {"prepare", "1/sample", "1/verify", "1/evaluate",
                                       "2/train", "2/sample", "2/verify", "2/evaluate"}
    assert all(s["state"] == "done" and s["attempts"] == 1 for s in manifest["stages"].values())
    # executed notebooks are kept, with papermill's injected parameters
    nb = json.loads((paths.notebooks(2) / "10_train.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["iteration"] == 2
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
    # the sample table of the README's 'What a run is', as the sample stage wrote it, and its grades beside it
    assert list(pd.read_parquet(paths.samples(1, "test")).columns) == DESIGN_COLUMNS
    assert list(pd.read_parquet(paths.graded(1, "test")).columns) == GRADED_COLUMNS
    for key, stage in manifest["stages"].items():  # every recorded hash is still the file's: no stage rewrote one
        for rel, digest in stage.get("outputs", {}).items():
            assert artifacts.sha256(paths.root / rel) == digest, (key, rel)
    assert sorted(manifest["stages"]["1/verify"]["outputs"]) == [f"iter_1/graded_{s}.parquet"
                                                                 for s in ("ood", "test", "train")]
    test = Run(tiny_run).graded(1, "test")
    assert list(test.columns) == DESIGN_COLUMNS + ["extracted", "status", "correct"]
    assert set(test["decoding"]) == {"greedy", "sample"}
    per_problem = test.groupby(["problem_id", "decoding"]).size().unstack()
    assert (per_problem["greedy"] == 1).all() and (per_problem["sample"] == 5).all()  # sample.n_eval_samples
    assert set(test["status"]) <= {"correct", "incorrect", "no_answer", "timeout", "error"}
    train = Run(tiny_run).graded(1, "train")
    assert train["problem_id"].nunique() == 60 and (train.groupby("problem_id").size() == 4).all()
    assert not paths.samples(2, "train").exists()  # M_T trains nothing
    # M2's DPO pairs, built by its train stage from M1's graded samples, with provenance; a training log with
    # the DPO signals and the data's counts
    assert not paths.train_data(1).exists()
    pairs = pd.read_parquet(paths.train_data(2))
    assert len(pairs) > 0
    for _, p in pairs.iterrows():
        rows = train[train["problem_id"] == p["problem_id"]].set_index("sample_idx")
        assert rows.loc[p["chosen_idx"], "response"] == p["chosen"] and rows.loc[p["chosen_idx"], "correct"]
        assert rows.loc[p["rejected_idx"], "response"] == p["rejected"] and not rows.loc[p["rejected_idx"], "correct"]
    log = json.loads(paths.train_log(2).read_text())
    assert {"rewards/margins", "logps/chosen", "rewards/chosen"} <= set(log["summary"])
    assert log["data"] == {"kind": "dpo", "rows": len(pairs), "problems": pairs["problem_id"].nunique(),
                           "from_iteration": 1}
    m = _metrics(tiny_run)
    assert set(m) == {"iter_1", "iter_2"}
    for it in m.values():
        assert 0 <= it["test"]["pass@1"] <= 1 and set(it["test"]["pass@k"]) == {"1", "2", "4"}
        assert it["test"]["pass@k"]["1"] <= it["test"]["pass@k"]["2"] <= it["test"]["pass@k"]["4"]
    assert "training" in m["iter_2"] and m["iter_1"]["train"]["n_problems"] == 60
    assert m["iter_2"]["training"]["data"] == log["data"] and "train_data_rows" not in m["iter_1"]
    assert (paths.report / "pass1_by_iteration.png").stat().st_size > 10_000
    assert "| M2 |" in (paths.report / "summary.md").read_text()


def test_sampling_and_training_draw_text_bars_in_their_stage_logs(tiny_run):
    """The runner's terminal line shows the newest bar of a stage's stderr log (stages._live_progress)."""
    notebooks = artifacts.RunPaths(tiny_run).notebooks
    for log in (notebooks(1) / "20_sample.stderr.log", notebooks(2) / "10_train.stderr.log"):
        bar = pipeline.last_progress(log.read_text(errors="replace"))
        assert bar is not None and "100%" in bar, log


def test_report_writes_figures_elsewhere_only_when_asked(tiny_run, tmp_path, capsys):
    from selfimprove import cli

    repo_figure = pipeline.PACKAGE_ROOT / "figures" / "pass1_by_iteration.png"
    before = repo_figure.stat().st_mtime_ns if repo_figure.exists() else None
    assert cli.main(["report", str(tiny_run)]) == 0
    assert (repo_figure.stat().st_mtime_ns if repo_figure.exists() else None) == before
    assert cli.main(["report", str(tiny_run), "--figures-dir", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "pass1_by_iteration.png").stat().st_size > 10_000
    assert "| M2 |" in capsys.readouterr().out


def test_dpo_changed_the_model(tiny_run):
    from safetensors.torch import load_file

    a = load_file(str(artifacts.RunPaths(tiny_run).model(1) / "model.safetensors"))
    b = load_file(str(artifacts.RunPaths(tiny_run).model(2) / "model.safetensors"))
    assert a.keys() == b.keys()
    changed = [k for k in a if not (a[k] == b[k]).all()]
    assert any("proj" in k for k in changed)  # LoRA targets moved once merged
    assert not any("embed" in k or "norm" in k for k in changed)  # and nothing LoRA does not touch


def test_rerun_skips_done_stages_and_refuses_another_config(tiny_run, organism_root):
    notebook = artifacts.RunPaths(tiny_run).notebooks(2) / "10_train.ipynb"
    before = notebook.stat().st_mtime_ns
    lines = []
    pipeline.run("tiny", runs_root=tiny_run.parent, organism_root=organism_root, figures_dir=None, log=lines.append)
    assert notebook.stat().st_mtime_ns == before
    assert sum("skipped" in line for line in lines) == 7
    with pytest.raises(FileExistsError, match="another config"):
        pipeline.run("tiny", overrides=["sample.temperature=0.9"], runs_root=tiny_run.parent,
                     organism_root=organism_root, figures_dir=None, log=lambda *a: None)


def _work_cell_running(nb_path: Path) -> bool:
    """Whether papermill's executed copy marks the stage's work cell (`stagecache.run_stage(cfg)`) as running."""
    try:
        cells = json.loads(nb_path.read_text())["cells"]
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return False
    return any("run_stage(cfg)" in "".join(c["source"])
               and c["metadata"].get("papermill", {}).get("status") == "running" for c in cells)


def _kill_during(stage_key: str, runs_root: Path, organism_root: Path) -> None:
    """Start `selfimprove run tiny`, SIGKILL its whole process group while `stage_key` is running, once the
    stage's work cell (sampling, training) has started: the stage is well inside its work."""
    proc = subprocess.Popen([sys.executable, "-m", "selfimprove.cli", "run", "tiny", "--runs-root", str(runs_root),
                             "--organism-root", str(organism_root)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=pipeline.PACKAGE_ROOT)
    t, stage = stage_key.split("/")
    executed = runs_root / "tiny" / f"iter_{t}" / "notebooks" / pipeline.STAGE_NOTEBOOKS[stage]
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and not _work_cell_running(executed):
            time.sleep(0.05)
        assert proc.poll() is None, f"run ended before {stage_key} was caught running"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("stage_key", ["1/sample", "2/train"])
def test_sigkill_then_rerun_gives_the_same_metrics(stage_key, tiny_run, organism_root, tmp_path):
    _kill_during(stage_key, tmp_path, organism_root)
    killed = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert killed["stages"][stage_key]["state"] == "running"
    lines = []
    run_dir = pipeline.run("tiny", runs_root=tmp_path, organism_root=organism_root, figures_dir=None,
                           log=lines.append)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"][stage_key]["attempts"] == 2
    assert all(s["state"] == "done" for s in manifest["stages"].values())
    assert any("skipped" in line for line in lines) or stage_key == "1/sample"
    assert _metrics(run_dir) == _metrics(tiny_run)
    for t, split in ((1, "test"), (1, "train"), (2, "ood")):
        a = pd.read_parquet(artifacts.RunPaths(run_dir).samples(t, split))
        b = pd.read_parquet(artifacts.RunPaths(tiny_run).samples(t, split))
        pd.testing.assert_frame_equal(a, b)
    assert not list(run_dir.rglob("*.tmp*")) and not list(run_dir.rglob(".*.old*"))


def test_failing_stage_names_itself_and_keeps_finished_stages(organism_root, tmp_path):
    with pytest.raises(pipeline.StageError, match=r"stage 2/train failed: \w+Error: .*nope") as err:
        pipeline.run("tiny", overrides=["train.target_modules=[nope]"], runs_root=tmp_path,
                     organism_root=organism_root, figures_dir=None, log=lambda *a: None)
    assert "10_train.ipynb" in str(err.value) and "run the same command again" in str(err.value)
    stages = json.loads((tmp_path / "tiny" / "manifest.json").read_text())["stages"]
    assert stages["2/train"]["state"] == "failed" and "nope" in stages["2/train"]["error"]
    assert all(stages[k]["state"] == "done" for k in ("prepare", "1/sample", "1/verify", "1/evaluate"))
    assert (tmp_path / "tiny" / "iter_1" / "samples_test.parquet").exists()


def test_stages_get_absolute_paths_when_started_elsewhere(tmp_path, monkeypatch):
    """A relative runs root or model folder, given where the command was started, reaches the stage notebooks
    as absolute paths (the executed notebooks keep them, whoever opens them and from wherever)."""
    seen = {}

    def stage(stage, stage_cfg, out_nb, log_output, session=None):
        seen.update(run_dir=stage_cfg.run_dir, base_model=stage_cfg.base_model)
        raise RuntimeError("stop here")

    (tmp_path / "m0").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: None)
    monkeypatch.setattr(stages, "execute_stage", stage)
    with pytest.raises(pipeline.StageError, match="stage 1/train failed"):
        pipeline.run("tiny", overrides=["model=./m0", "name=rel"], runs_root="runs", kernel="fresh",
                     log=lambda *a: None)
    assert seen == {"run_dir": str(tmp_path / "runs" / "rel"), "base_model": str(tmp_path / "m0")}


def test_stages_run_in_the_runners_working_directory_with_its_code(tmp_path, monkeypatch):
    """The shared kernel starts where `selfimprove run` was started (data/cache there, as for `selfimprove
    metrics`), not in the package's folder (site-packages when installed), and imports the runner's own package."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    with pipeline.kernel_session("shared", tmp_path / "kernel.stderr.log") as session:  # starts no kernel yet
        assert session.cwd == str(tmp_path)
        assert session.env["PYTHONPATH"].split(os.pathsep) == [str(artifacts.IMPORT_ROOT), "/elsewhere"]
        assert session.env["SELFIMPROVE_PROGRESS"] == "text"


def test_stop_after_must_name_a_stage_of_the_recipe(tmp_path, monkeypatch):
    """`--stop-after 1/eval` (a typo) is refused before any work instead of running the whole recipe."""
    def stage(*args, **kwargs):
        raise RuntimeError("a stage ran")

    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: None)
    monkeypatch.setattr(stages, "execute_stage", stage)
    with pytest.raises(RecipeError, match=r"--stop-after '1/eval' is not a stage of recipe 'tiny'; one of: "
                                          r"1/sample, 1/verify, 1/evaluate, 2/train"):
        pipeline.run("tiny", runs_root=tmp_path, stop_after="1/eval", kernel="fresh", log=lambda *a: None)
    assert not any(tmp_path.iterdir())
