"""The recipes and the grid runner: every committed recipe validates, the generated ones are up to date, and
the runner validates everything first, goes on past a failure, skips finished runs and collects one table.

The runner's control flow is tested with `pipeline.run` replaced by a fake that writes what a finished run
leaves (a manifest with every stage done and each iteration's metrics.json); the one real run is the shared
`tiny_run` fixture (slow tier), over which the grid must skip and collect."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from selfimprove import cli, grid, metrics, pipeline
from selfimprove.config import load_recipe

RECIPES = sorted(pipeline.RECIPES.rglob("*.yaml"))
TINY = (pipeline.RECIPES / "tiny.yaml").read_text()


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(pipeline.RECIPES)) for p in RECIPES])
def test_every_committed_recipe_loads_and_validates(path):
    cfg = load_recipe(path)  # every stage of every iteration of every run is validated
    assert cfg.iterations >= 1


@pytest.mark.parametrize("kind", ["paper", "small"])
def test_generated_recipes_are_the_committed_ones(kind):
    assert grid.write_recipes(kind, check=True) == [], f"run `selfimprove recipes {kind}`"


def test_paper_grid_is_the_papers_setting():
    cfgs = [load_recipe(p) for p in grid.find_recipes("paper")]
    assert len(cfgs) == 12
    assert {c.model for c in cfgs} == {"meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1",
                                       "meta-llama/Meta-Llama-3-8B"}
    assert {(c.model, c.task) for c in cfgs} == {(m, t) for m in {c.model for c in cfgs}
                                                 for t in ("csqa", "gsm8k", "math", "mbpp")}
    for c in cfgs:
        assert c.iterations == 5 and c.paradigms == ["sft", "dpo", "sft-dpo"]
        s = c.member("dpo").stage("sample", 2, "<run>")
        assert (s.n_samples, s.temperature, s.top_p, s.backend) == (50, 0.75, 0.95, "vllm")
        tr = c.member("dpo").stage("train", 2, "<run>")
        assert tr.backend == "unsloth" and tr.lora_r > 0 and tr.precision == "bf16" and not tr.load_in_4bit
        assert tr.num_processes == 1 and s.tensor_parallel_size == 1 and s.data_parallel_size == 1
    assert len(grid.plan(grid.find_recipes("paper"), "/nonexistent-runs")) == 36


def test_small_recipes_use_small_models():
    cfgs = [load_recipe(p) for p in grid.find_recipes("small")]
    assert cfgs and all(c.model.startswith("Qwen/Qwen2.5-") and ("0.5B" in c.model or "1.5B" in c.model)
                        for c in cfgs)


# --- the runner, with a fake pipeline.run ------------------------------------------------------------------

def _recipe(folder: Path, name: str, **changes) -> Path:
    raw = yaml.safe_load(TINY)
    raw.update(name=name, **changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _finish(cfg, runs_root: Path, pass1: list[float]) -> None:
    """What a finished run leaves for the grid: a manifest with every stage done and metrics.json per t."""
    root = runs_root / cfg.name
    stages = {f"{t}/{s}": {"state": "done"} for t in range(1, cfg.iterations + 1) for s in pipeline.stages_of(t)}
    for t, value in enumerate(pass1, 1):
        row = dict(split="test", metric="pass@1", subset="all", k=1, value=value, ci_low=None, ci_high=None, n=40)
        ood = {**row, "split": "ood", "value": value / 2}
        (root / f"iter_{t}").mkdir(parents=True, exist_ok=True)
        (root / f"iter_{t}" / "metrics.json").write_text(json.dumps({"iteration": t, "table": [row, ood]}))
    (root / "manifest.json").write_text(json.dumps({"config_hash": cfg.digest(), "stages": stages}))


class FakePipeline:
    """Stands in for pipeline.run: records each call; fails for the recipes named in `fail`."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, recipe, *, overrides=None, runs_root, organism_root, log=print, **_):
        cfg = load_recipe(recipe, overrides)
        self.calls.append(cfg.name)
        if cfg.name in self.fail:
            raise pipeline.StageError(f"stage 2/train failed: boom ({cfg.name})")
        for m in [cfg.member(p) for p in cfg.paradigms] if cfg.is_study else [cfg]:
            _finish(m, Path(runs_root), [0.40, 0.45])
        return Path(runs_root) / cfg.name


@pytest.fixture
def fake(monkeypatch):
    f = FakePipeline()
    monkeypatch.setattr(pipeline, "run", f)
    return f


def test_every_recipe_is_validated_before_any_run(tmp_path, fake):
    _recipe(tmp_path, "a")
    _recipe(tmp_path, "b", sample={"temprature": 0.7})
    _recipe(tmp_path, "c", iterations=0)
    (tmp_path / "d.yaml").write_text("name: [unclosed\n")
    with pytest.raises(grid.GridError) as e:
        grid.run(tmp_path, runs_root=tmp_path / "runs", log=lambda *a: None)
    msg = str(e.value)
    assert "3 problem(s)" in msg and "nothing was run" in msg
    assert "'temprature' (did you mean 'temperature'?)" in msg and "'iterations' must be >= 1" in msg
    assert "d.yaml: not valid YAML" in msg
    assert fake.calls == [] and not (tmp_path / "runs").exists()


def test_two_recipes_writing_one_run_directory_are_refused(tmp_path, fake):
    _recipe(tmp_path, "a")
    (tmp_path / "b.yaml").write_text((tmp_path / "a.yaml").read_text())  # same `name: a`
    with pytest.raises(grid.GridError, match="run 'a' is also made by recipe"):
        grid.run(tmp_path, runs_root=tmp_path / "runs", log=lambda *a: None)
    assert fake.calls == []


def test_a_run_directory_of_another_config_is_refused_before_running(tmp_path, fake):
    _recipe(tmp_path, "a")
    _recipe(tmp_path, "b")
    (tmp_path / "runs" / "b").mkdir(parents=True)
    (tmp_path / "runs" / "b" / "manifest.json").write_text(json.dumps({"config_hash": "other", "stages": {}}))
    with pytest.raises(grid.GridError, match="holds a run made with another config"):
        grid.run(tmp_path, runs_root=tmp_path / "runs", log=lambda *a: None)
    assert fake.calls == []


def test_grid_goes_on_past_a_failure_then_resumes_and_skips_finished_runs(tmp_path, monkeypatch):
    for n in ("a", "b", "c"):
        _recipe(tmp_path, n)
    runs, lines = tmp_path / "runs", []
    first = FakePipeline(fail={"b"})
    monkeypatch.setattr(pipeline, "run", first)
    result = grid.run(tmp_path, runs_root=runs, log=lines.append)
    assert first.calls == ["a", "b", "c"]  # c ran after b failed
    assert result.failures == [(str(tmp_path / "b.yaml"), "StageError: stage 2/train failed: boom (b)")]
    assert [r.status for r in result.runs] == ["done", "new", "done"]
    assert "1 failure(s)" in lines[-1] and "boom (b)" in lines[-1]
    # the collected table already holds the two finished runs
    table = pd.read_csv(runs / "grid" / "metrics.csv")
    assert sorted(table["run"].unique()) == ["a", "c"]

    second = FakePipeline()
    monkeypatch.setattr(pipeline, "run", second)
    result = grid.run(tmp_path, runs_root=runs, log=lines.append)
    assert second.calls == ["b"] and result.failures == []  # a and c are done: skipped without a call
    assert all(r.done for r in result.runs)
    third = FakePipeline()
    monkeypatch.setattr(pipeline, "run", third)
    grid.run(tmp_path, runs_root=runs, log=lines.append)
    assert third.calls == []


def test_a_partly_done_run_is_resumed(tmp_path, fake):
    path = _recipe(tmp_path, "a")
    cfg = load_recipe(path)
    _finish(cfg, tmp_path / "runs", [0.4])
    manifest = tmp_path / "runs" / "a" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["stages"]["2/evaluate"] = {"state": "running"}
    manifest.write_text(json.dumps(data))
    (plan,) = grid.plan([path], tmp_path / "runs")
    assert plan.status == "partial (6/7 stages)"
    grid.run(path, runs_root=tmp_path / "runs", log=lambda *a: None)
    assert fake.calls == ["a"]


def test_collected_table_and_pass1_pivot(tmp_path, fake):
    _recipe(tmp_path, "a")
    _recipe(tmp_path, "s", paradigm=["sft", "dpo"])
    result = grid.run(tmp_path, runs_root=tmp_path / "runs", log=lambda *a: None)
    assert fake.calls == ["a", "s"]  # a study is one pipeline.run call
    csv, md = result.written
    assert csv == tmp_path / "runs" / "grid" / "metrics.csv"
    table = pd.read_csv(csv)
    assert list(table.columns) == ["recipe", "run", "model", "task", "paradigm", *metrics.TABLE_COLUMNS]
    assert sorted(table["run"].unique()) == ["a", "s/dpo", "s/sft"]
    assert set(table["model"]) == {"organism"} and set(table["task"]) == {"arith"}
    assert table.groupby("run")["paradigm"].first().to_dict() == {"a": "dpo", "s/dpo": "dpo", "s/sft": "sft"}
    assert len(table) == 3 * 2 * 2  # runs x iterations x (test, ood)
    text = md.read_text()
    assert "| run | model | task | paradigm | M1 | M2 | best (gain over M1) |" in text
    assert "| s/sft | organism | arith | sft | 0.400 | 0.450 | M2 0.450 (+0.050) |" in text
    assert text.count("| organism | arith |") == 3  # one row per run, even where model, task and paradigm agree


def test_pass1_pivot_best_iterate_is_after_m1():
    rows = [dict(run="r", model="organism", task="arith", paradigm="dpo", iteration=t, split="test", metric="pass@1",
                 subset="all", value=v) for t, v in ((1, 0.5), (2, 0.3), (3, 0.4))]
    text = grid.pass1_table(pd.DataFrame(rows))
    assert "| r | organism | arith | dpo | 0.500 | 0.300 | 0.400 | M3 0.400 (-0.100) |" in text


def test_only_runs_the_selected_runs_of_a_study(tmp_path, monkeypatch, fake):
    path = _recipe(tmp_path, "s", paradigm=["sft", "dpo"])
    _recipe(tmp_path, "a")
    calls = []

    def run_config(cfg, *, runs_root, organism_root, log, siblings):
        calls.append((cfg.name, cfg.paradigm, [p.name for p in siblings]))
        _finish(cfg, Path(runs_root), [0.5])

    monkeypatch.setattr(pipeline, "run_config", run_config)
    result = grid.run(tmp_path, runs_root=tmp_path / "runs", only=["*/dpo"], log=lambda *a: None)
    assert [r.name for r in result.runs] == ["s/dpo"]
    assert calls == [("s/dpo", "dpo", ["sft"])] and fake.calls == []
    assert load_recipe(path).member("dpo").digest() == json.loads(
        (tmp_path / "runs" / "s" / "dpo" / "manifest.json").read_text())["config_hash"]
    with pytest.raises(grid.GridError, match="selects none"):
        grid.plan(grid.find_recipes(tmp_path), tmp_path / "runs", only=["nothing*"])


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, fake, capsys):
    _recipe(tmp_path, "a")
    _recipe(tmp_path, "b")
    _finish(load_recipe(tmp_path / "a.yaml"), tmp_path / "runs", [0.4, 0.5])
    rc = cli.main(["grid", str(tmp_path), "--dry-run", "--runs-root", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert rc == 0 and fake.calls == []
    assert "grid: 2 run(s) from 2 recipe(s), 1 done" in out
    assert "| a | organism | arith | dpo |" in out and out.rstrip().endswith("| new |")
    assert not (tmp_path / "runs" / "grid").exists()


def test_cli_exit_codes(tmp_path, fake, capsys):
    assert cli.main(["grid", str(tmp_path / "none"), "--runs-root", str(tmp_path)]) == 2
    assert "no recipe (*.yaml) matches" in capsys.readouterr().err
    _recipe(tmp_path, "a")
    fake.fail = {"a"}
    assert cli.main(["grid", str(tmp_path / "*.yaml"), "--runs-root", str(tmp_path / "runs")]) == 1
    assert cli.main(["recipes", "paper", "--check"]) == 0


def test_recipe_check_finds_a_stale_file(tmp_path):
    written = grid.write_recipes("small", tmp_path)
    assert len(written) == 4 and grid.write_recipes("small", tmp_path, check=True) == []
    written[0].write_text(written[0].read_text().replace("n_samples: 16", "n_samples: 8"))
    assert grid.write_recipes("small", tmp_path, check=True) == [written[0]]


# --- one real run (the shared tiny run of the slow tier) -------------------------------------------------

@pytest.mark.slow
def test_grid_skips_a_finished_real_run_and_collects_its_metrics(tiny_run, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a finished run must not be run again")

    monkeypatch.setattr(pipeline, "run", refuse)
    runs_root = tiny_run.parent
    result = grid.run(pipeline.RECIPES / "tiny.yaml", runs_root=runs_root, log=lambda *a: None)
    assert [r.status for r in result.runs] == ["done"] and result.failures == []
    table = pd.read_csv(runs_root / "grid" / "metrics.csv")
    own = metrics.collect(tiny_run)
    assert len(table) == len(own) and set(table["run"]) == {"tiny"}
    pass1 = own[(own["split"] == "test") & (own["metric"] == "pass@1") & (own["subset"] == "all")]
    pivot = (runs_root / "grid" / "pass1.md").read_text()
    assert f"| tiny | organism | arith | dpo | {pass1['value'].iloc[0]:.3f} |" in pivot
