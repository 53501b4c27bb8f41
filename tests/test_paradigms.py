"""The three paradigms: which F_t each iteration trains with, the SFT data, what a study shares between its
runs, and a tiny study run end to end (real SFT and DPO training through the stage notebooks)."""

import json

import pandas as pd
import pytest

from selfimprove import artifacts, config, pairs, pipeline, profiling, report, sample, train


def test_train_kinds_follow_the_paper():
    # inferred from paper Figures 1, 4, 5: SFT-DPO's t = 2 equals DPO's, then it alternates
    assert [config.train_kind("sft-dpo", t) for t in range(1, 6)] == [None, "dpo", "sft", "dpo", "sft"]
    assert [config.train_kind("sft", t) for t in range(2, 6)] == ["sft"] * 4
    assert [config.train_kind("dpo", t) for t in range(2, 6)] == ["dpo"] * 4
    with pytest.raises(ValueError, match="unknown paradigm"):
        config.train_kind("ppo", 2)


def _study(**kw) -> config.RunConfig:
    raw = {"name": "s", "iterations": 4, "paradigm": ["sft", "dpo", "sft-dpo"], **kw}
    return config.build(config.RunConfig, raw, "test")


def test_study_recipe_validation():
    assert _study().is_study and _study().member("sft").name == "s/sft"
    with pytest.raises(config.RecipeError, match="list of distinct ones"):
        _study(paradigm=["sft", "sft"])
    with pytest.raises(config.RecipeError, match="'paradigm' must be one of"):
        _study(paradigm=["sft", "rlhf"])
    with pytest.raises(config.RecipeError, match="is a study"):
        _study().stage("train", 2, "x")


def test_train_config_choices_are_checked():
    base = {"run_dir": "x", "iteration": 2}
    for key, bad in (("ref_model", "m0"), ("data_mode", "all"), ("backend", "deepspeed"), ("precision", "fp8")):
        with pytest.raises(config.RecipeError, match=f"'{key}' must be one of"):
            config.build(config.TrainConfig, {**base, key: bad}, "test")
    with pytest.raises(config.RecipeError, match="needs lora_r > 0"):
        config.build(config.TrainConfig, {**base, "merge_adapter": False, "lora_r": 0}, "test")


def _graded(statuses: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for pid, sts in statuses.items():
        for i, s in enumerate(sts):
            rows.append({"problem_id": pid, "level": 1, "prompt": f"q{pid}", "decoding": "sample", "sample_idx": i,
                         "response": f"{pid}-r{i % 3}", "status": s})
    rows.append({"problem_id": "a", "level": 1, "prompt": "qa", "decoding": "greedy", "sample_idx": 0,
                 "response": "greedy", "status": "correct"})
    return pd.DataFrame(rows)


def test_sft_rows_keep_correct_distinct_responses_capped():
    df = _graded({"a": ["correct"] * 6, "b": ["incorrect", "timeout", "correct"], "c": ["incorrect"] * 3})
    rows = pairs.make_sft_rows(df, max_per_problem=2, dedup=True, seed=0)
    assert list(rows.columns) == pairs.SFT_COLUMNS
    assert rows.groupby("problem_id").size().to_dict() == {"a": 2, "b": 1}  # c has no correct response
    assert rows[rows.problem_id == "a"]["completion"].is_unique  # a's responses repeat every 3 samples
    assert "greedy" not in set(rows["completion"])  # only sampled responses train
    assert len(pairs.make_sft_rows(df, max_per_problem=0, dedup=False)) == 7
    assert len(pairs.make_sft_rows(df, max_per_problem=0, dedup=True)) == 4


def test_accumulated_data_takes_the_same_kind_from_earlier_iterations(tmp_path):
    paths = artifacts.RunPaths(tmp_path)
    sft = pd.DataFrame({"problem_id": ["p"], "prompt": ["q"], "completion": ["a"]})
    dpo = pd.DataFrame({"problem_id": ["p"], "prompt": ["q"], "chosen": ["a"], "rejected": ["b"]})
    for t, table in ((2, dpo), (3, sft), (4, dpo), (5, sft)):  # SFT-DPO: the data of M2..M5
        paths.iter_dir(t).mkdir(parents=True)
        artifacts.write_parquet(table, paths.train_data(t))
    cfg = config.build(config.TrainConfig, {"run_dir": str(tmp_path), "iteration": 5, "iterations": 5,
                                            "paradigm": "sft-dpo", "data_mode": "accumulate"}, "test")
    assert train.iteration_data(cfg, paths)["source_iteration"].tolist() == [2, 4]
    fresh = config.build(config.TrainConfig, {**cfg.__dict__, "data_mode": "fresh"}, "test")
    assert train.iteration_data(fresh, paths)["source_iteration"].tolist() == [4]
    wrong = config.build(config.TrainConfig, {**cfg.__dict__, "paradigm": "dpo", "data_mode": "fresh"}, "test")
    with pytest.raises(train.TrainError, match="built for another paradigm"):
        train.iteration_data(wrong, paths)


def test_unsloth_backend_fails_before_loading_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = config.build(config.TrainConfig, {"run_dir": "x", "iteration": 2, "backend": "unsloth"}, "test")
    with pytest.raises(train.TrainError, match="needs a CUDA GPU"):
        train.check_backend(cfg)


@pytest.mark.parametrize("merge,ref_model,reference", [(True, "previous", "iter_2/model"),
                                                       (False, "previous", "iter_2/model"),
                                                       (False, "m1", "iter_1/model")])
def test_train_log_names_the_dpo_reference_that_was_used(tmp_path, monkeypatch, merge, ref_model, reference):
    """With merge_adapter: false the policy is M1 plus M(t-1)'s adapter, and TRL's reference is a frozen copy of
    that adapter (a 'ref' adapter), i.e. M(t-1), not M1: the log must say so."""
    from types import SimpleNamespace

    paths = artifacts.RunPaths(tmp_path)
    paths.iter_dir(2).mkdir(parents=True)
    artifacts.write_parquet(pd.DataFrame({"problem_id": ["p"], "prompt": ["q"], "chosen": ["a"], "rejected": ["b"]}),
                            paths.train_data(3))
    saver = SimpleNamespace(save_pretrained=lambda d: None)
    model = SimpleNamespace(save_pretrained=lambda d: None, merge_and_unload=lambda: saver)
    trainer = SimpleNamespace(accelerator=SimpleNamespace(is_main_process=True, unwrap_model=lambda m: m),
                              model=model, args=SimpleNamespace(output_dir=str(tmp_path / "o")),
                              state=SimpleNamespace(log_history=[]))
    monkeypatch.setitem(train.TRAINERS, "dpo", lambda *a, **k: (trainer, saver))
    threads = []
    monkeypatch.setattr(train.profiling, "set_torch_threads", threads.append)
    cfg = config.build(config.TrainConfig, {"run_dir": str(tmp_path), "iteration": 3, "iterations": 4,
                                            "paradigm": "dpo", "merge_adapter": merge, "ref_model": ref_model,
                                            "threads": 1}, "test")
    log = train.fit(cfg, paths, paths.model(3).with_name("model.tmp"))
    assert log["reference"].endswith(reference)
    assert threads == [1]  # train.threads is applied


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, organism_root):
    runs = tmp_path_factory.mktemp("study")
    lines = []
    root = pipeline.run("tiny", overrides=["paradigm=[dpo, sft-dpo, sft]", "iterations=3", "name=study"],
                        runs_root=runs, organism_root=organism_root, log=lines.append)
    return root, lines


@pytest.mark.slow
def test_a_study_runs_every_paradigm_and_shares_what_is_the_same(tiny_study):
    root, lines = tiny_study
    runs = {p: artifacts.RunPaths(root / p) for p in ("dpo", "sft-dpo", "sft")}
    stages = {p: json.loads(r.manifest.read_text())["stages"] for p, r in runs.items()}
    # what each run trained with, as the paper's paradigms say
    kinds = {p: [json.loads(r.train_log(t).read_text())["kind"] for t in (2, 3)] for p, r in runs.items()}
    assert kinds == {"dpo": ["dpo", "dpo"], "sft-dpo": ["dpo", "sft"], "sft": ["sft", "sft"]}
    # each M_t's own data, built by its train stage from M(t-1)'s graded samples
    assert set(pd.read_parquet(runs["sft"].train_data(2)).columns) >= {"prompt", "completion"}
    assert set(pd.read_parquet(runs["sft-dpo"].train_data(3)).columns) >= {"prompt", "completion"}
    assert set(pd.read_parquet(runs["dpo"].train_data(3)).columns) >= {"prompt", "chosen", "rejected"}
    for r in runs.values():
        for t in (2, 3):
            assert json.loads(r.train_log(t).read_text())["data"]["rows"] == len(pd.read_parquet(r.train_data(t)))
    # shared: M1's sampling, grading and metrics for all (no stage looks ahead to F_(t+1)); SFT-DPO's M2, its
    # samples, grades and metrics from DPO; nothing shared that differs
    for stage in ("1/sample", "1/verify", "1/evaluate"):
        assert stages["sft-dpo"][stage]["shared_from"].endswith("dpo") and stages["sft"][stage].get("shared_from")
    for stage in ("2/train", "2/sample", "2/verify", "2/evaluate"):
        assert stages["sft-dpo"][stage]["shared_from"].endswith("dpo")
    assert "shared_from" not in stages["sft-dpo"]["3/train"] and "shared_from" not in stages["sft"]["2/train"]
    assert artifacts.sha256(runs["dpo"].model(2)) == artifacts.sha256(runs["sft-dpo"].model(2))
    assert artifacts.sha256(runs["dpo"].model(3)) != artifacts.sha256(runs["sft-dpo"].model(3))
    # the SFT iterations moved the model and logged their loss
    assert artifacts.sha256(runs["sft"].model(2)) != artifacts.sha256(runs["sft"].model(1))
    log = json.loads(runs["sft"].train_log(2).read_text())
    assert log["rows"] > 0 and "loss" in log["summary"]
    # model compute is recorded beside wall time; shared stages cost nothing
    wall = stages["dpo"]["1/sample"]["seconds"]
    sampled = profiling.read(runs["dpo"].root, 1, "sample")
    assert 0 < sampled["compute_s"] < wall
    device = sample.torch_device("auto")  # where the samples were drawn: the CPU in float32 here
    assert (sampled["device"], sampled["dtype"]) == (device, str(sample.torch_dtype(
        "auto", device, runs["dpo"].model(1))).removeprefix("torch."))
    assert 0 < profiling.read(runs["sft"].root, 2, "train")["compute_s"] < stages["sft"]["2/train"]["seconds"]
    timing = report.timing_table(artifacts.Manifest.load(runs["sft-dpo"]))
    assert "| 2/train | 0.0 | 0.0 | 0.0 |" in timing and "from dpo" in timing
    # one comparison table, a row per paradigm
    summary = (root / "report" / "summary.md").read_text()
    assert all(f"| {p} |" in summary for p in runs)
    assert any("taken from there" in line for line in lines)
    assert any("where the time went" in line and "| sample |" in line for line in lines)
    for name in ("pass1_by_iteration.png", "figure1_pass1.png", "figure1_pass1.pdf", "reversal_dashboard.png"):
        assert (root / "report" / name).exists(), name


@pytest.mark.slow
def test_report_command_renders_a_study_again(tiny_study, tmp_path, capsys):
    from selfimprove import cli

    root, _ = tiny_study
    assert cli.main(["report", str(root), "--figures-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "the paradigms side by side" in out and out.count("| model | F_t |") == 3
    assert (tmp_path / "pass1_by_iteration.png").exists() and (tmp_path / "figure4_diversity.pdf").exists()


@pytest.mark.slow
def test_a_shared_stage_resumes_like_a_computed_one(tiny_study, organism_root):
    root, _ = tiny_study
    lines = []
    pipeline.run("tiny", overrides=["paradigm=[dpo, sft-dpo, sft]", "iterations=3", "name=study"],
                 runs_root=root.parent, organism_root=organism_root, log=lines.append)
    assert not any("running" in line for line in lines)  # every stage of every run is done or shared


@pytest.mark.slow
def test_open_choices_one_adapter_m1_reference_accumulated_data(tmp_path, organism_root):
    """merge_adapter: false (one LoRA adapter on M1, trained on), ref_model: m1 and data_mode: accumulate,
    through SFT-DPO's DPO, SFT, DPO: each M_t is M1 plus its adapter, and the t = 4 DPO reads the pairs of
    M2 and M4 (from M1's and M3's samples) against M1."""
    root = pipeline.run("tiny", overrides=["paradigm=sft-dpo", "iterations=4", "name=choices",
                                           "train.merge_adapter=false", "train.ref_model=m1",
                                           "train.data_mode=accumulate"],
                        runs_root=tmp_path, organism_root=organism_root, log=lambda *a: None)
    paths = artifacts.RunPaths(root)
    logs = {t: json.loads(paths.train_log(t).read_text()) for t in (2, 3, 4)}
    assert [logs[t]["kind"] for t in (2, 3, 4)] == ["dpo", "sft", "dpo"]
    assert logs[2]["adapter"] is None and logs[3]["adapter"].endswith("iter_2/adapter")
    assert logs[4]["adapter"].endswith("iter_3/adapter") and logs[4]["reference"].endswith("iter_1/model")
    assert logs[4]["base"].endswith("iter_1/model")
    pairs_2, pairs_4 = (len(pd.read_parquet(paths.train_data(t))) for t in (2, 4))  # M2's and M4's pairs
    assert logs[4]["rows"] == pairs_2 + pairs_4 and logs[4]["data"]["rows"] == pairs_4
    for t in (2, 3, 4):
        assert (paths.adapter(t) / "adapter_config.json").exists()
        assert (paths.model(t) / "model.safetensors").exists()
    assert len({artifacts.sha256(paths.model(t)) for t in (1, 2, 3, 4)}) == 4
