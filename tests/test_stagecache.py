"""The stage cache (stagecache.py): a stage is known by what it reads; a resumed run redoes a stage whose inputs
or outputs changed, and the stages after it that read it; a stage notebook opened by hand shows a finished
stage instead of computing it again, and never overwrites one recorded with other settings."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from selfimprove import artifacts, config, pipeline, stagecache


def _study(**kw) -> config.RunConfig:
    raw = {"name": "s", "iterations": 4, "paradigm": ["sft", "dpo", "sft-dpo", "gold"], **kw}
    return config.build(config.RunConfig, raw, "test")


def _key(cfg: config.RunConfig, stage: str, t: int, stages: dict | None = None) -> str:
    return stagecache.inputs_key(stages or {}, stage, t, cfg.stage(stage, t, f"/runs/{cfg.name}"))


def test_settings_are_the_same_exactly_where_the_stage_is():
    s = _study()
    sft, dpo, mix, gold = (s.member(p) for p in ("sft", "dpo", "sft-dpo", "gold"))
    # M1's stages read the same for every arm (their run directories differ, which the key leaves out)
    for stage in ("sample", "verify", "evaluate"):
        assert _key(sft, stage, 1) == _key(dpo, stage, 1) == _key(mix, stage, 1) == _key(gold, stage, 1)
    # what trains M2: DPO for both DPO and SFT-DPO; SFT for SFT; gold SFT is not the loop's SFT
    assert _key(dpo, "train", 2) == _key(mix, "train", 2)
    assert len({_key(sft, "train", 2), _key(dpo, "train", 2), _key(gold, "train", 2)}) == 3
    assert _key(dpo, "train", 3) != _key(mix, "train", 3)  # DPO vs SFT at t = 3
    # a setting the stage reads separates it; one it does not read does not
    assert _key(_study(seed=1).member("dpo"), "sample", 1) != _key(dpo, "sample", 1)
    other_lr = _study(train={"learning_rate": 1e-3}).member("dpo")
    assert _key(other_lr, "sample", 1) == _key(dpo, "sample", 1)
    assert _key(other_lr, "train", 2) != _key(dpo, "train", 2)


def test_the_key_follows_the_recorded_outputs_of_the_stages_read():
    dpo = _study().member("dpo")
    stages = {"prepare": {"outputs": {"problems/train.jsonl": "a"}}, "2/train": {"outputs": {"iter_2/model": "m"}},
              "1/evaluate": {"outputs": {"iter_1/metrics.json": "x"}}}
    base = _key(dpo, "sample", 2, stages)
    assert _key(dpo, "sample", 2, {**stages, "2/train": {"outputs": {"iter_2/model": "m2"}}}) != base
    # sample reads M_t and the problems, not M1's metrics
    assert _key(dpo, "sample", 2, {**stages, "1/evaluate": {"outputs": {"iter_1/metrics.json": "y"}}}) == base
    assert "1/verify" in stagecache.upstream("train", 2) and "1/evaluate" not in stagecache.upstream("train", 2)


def _redone(lines: list[str]) -> set[str]:
    return {line.split("]")[0].strip(" [") for line in lines if "running it again" in line}


def _check_cascade(redone: set[str], paths, reference) -> None:
    """M2 retrained: where it came back byte-equal (training is deterministic on one machine and thread count),
    nothing that reads only M2 ran again; where it did not, its samples were drawn again."""
    same = artifacts.sha256(paths.model(2)) == artifacts.sha256(reference.model(2))
    assert ("2/sample" in redone) == (not same), (redone, same)


@pytest.mark.slow
def test_resume_redoes_what_changed_and_what_reads_it(tiny_run, organism_root, tmp_path):
    root = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, root)  # new modification times: every output is hashed again, and matches
    paths = artifacts.RunPaths(root)
    run = lambda: pipeline.run("tiny", runs_root=root.parent, organism_root=organism_root,  # noqa: E731
                               figures_dir=None, log=lines.append)
    lines: list[str] = []
    run()
    assert sum("skipped" in line for line in lines) == 7, lines
    reference = paths.metrics(2).read_text()

    # an output edited by hand: its stage runs again (and only it: no stage reads metrics.json)
    paths.metrics(2).write_text(reference.replace('"iteration"', '"iteration" ', 1))
    lines.clear()
    run()
    assert any("[2/evaluate] recorded as done, but its outputs are not as recorded" in line for line in lines)
    assert sum("skipped" in line for line in lines) == 6
    assert json.loads(paths.metrics(2).read_text()) == json.loads(reference)

    # as if 1/verify had been redone with another result (its grades recorded with another hash; the file keeps
    # its size and time, so 1/verify itself stands): every stage that reads M1's grades runs again, the rest not
    manifest = json.loads(paths.manifest.read_text())
    manifest["stages"]["1/verify"]["outputs"]["iter_1/graded_test.parquet"] = "0" * 64
    paths.manifest.write_text(json.dumps(manifest))
    lines.clear()
    run()
    redone = _redone(lines)
    assert {"1/evaluate", "2/train", "2/evaluate"} <= redone <= {"1/evaluate", "2/train", "2/evaluate", "2/sample",
                                                                 "2/verify"}, lines
    _check_cascade(redone, paths, artifacts.RunPaths(tiny_run))
    assert all(f"[{key}] recorded as done, but what it reads changed" in "\n".join(lines) for key in redone)

    # part of M1's weights zeroed and M2 deleted (a probe of issue 20): M1 is copied again from the organism
    # before M2 is trained from it, M2 comes back the same, and only the evaluate stage that reads M2's train log
    # (its times differ) runs again
    reference_paths = artifacts.RunPaths(tiny_run)
    weights = next(paths.model(1).glob("*.safetensors"))
    damaged = bytearray(weights.read_bytes())
    damaged[-4096:] = bytes(4096)
    weights.write_bytes(damaged)
    shutil.rmtree(paths.model(2))
    lines.clear()
    run()
    assert any("[prepare] recorded as done, but its outputs are not as recorded: iter_1/model: changed" in line
               for line in lines), lines
    redone = _redone(lines)
    assert {"2/train", "2/evaluate"} <= redone <= {"2/train", "2/evaluate", "2/sample", "2/verify"}, lines
    assert artifacts.sha256(paths.model(1)) == artifacts.sha256(reference_paths.model(1))
    _check_cascade(redone, paths, reference_paths)
    assert json.loads(paths.metrics(2).read_text()) == json.loads(reference)


@pytest.mark.slow
def test_a_notebook_shows_a_done_stage_and_refuses_to_overwrite_it(tiny_run, capsys):
    recorded = config.build(config.RunConfig, json.loads((tiny_run / "manifest.json").read_text())["config"], "t")
    cfg = recorded.stage("sample", 1, str(tiny_run))
    paths = artifacts.RunPaths(tiny_run)
    before = paths.samples(1, "test").stat().st_mtime_ns
    written = stagecache.run_stage(cfg)
    assert paths.samples(1, "test") in written and paths.samples(1, "test").stat().st_mtime_ns == before
    assert "not computed again" in capsys.readouterr().out
    with pytest.raises(stagecache.StageCacheError, match=r"temperature: 0\.\d+ -> 1\.5"):
        stagecache.run_stage(replace(cfg, temperature=1.5))
    assert paths.samples(1, "test").stat().st_mtime_ns == before
    # a study folder (here the runs root, which holds the one run) stands for its first run, as recorded
    shown = stagecache.notebook_config(config.SampleConfig, {"run_dir": str(tiny_run.parent), "iteration": 1,
                                                             "temperature": 1.5})
    assert shown == cfg
    # a run directory: the parameters as given
    given = stagecache.notebook_config(config.SampleConfig, {"run_dir": str(tiny_run), "iteration": 1})
    assert Path(given.run_dir) == tiny_run and given.temperature == config.SampleConfig.temperature
