"""A recipe on a real task with its own model, end to end through the stage notebooks: GSM8K problems from
local files in the dataset's format, MATH test problems as its OOD split (paper §5.3), and a local model
directory as M0 (the tiny organism's M0, which has a chat template), made M1 by gold SFT in iteration 1."""

import json

import pytest
import yaml

from selfimprove import artifacts, config, organism, pipeline
from selfimprove.runs import Run

FIXTURES = pipeline.PACKAGE_ROOT / "tests" / "fixtures" / "datasets"

pytestmark = pytest.mark.slow


def test_gsm8k_recipe_with_a_local_model_runs_gold_sft_then_the_loop_stages(tmp_path, organism_root):
    tiny = config.load_recipe(pipeline.RECIPES / "tiny.yaml").organism_config()
    m0 = organism.ensure(tiny, organism_root) / "M0"
    recipe = {
        "name": "gsm8k_local", "task": "gsm8k", "model": str(m0), "iterations": 1, "paradigm": "sft",
        "data": {"train": str(FIXTURES / "gsm8k.jsonl"), "test": str(FIXTURES / "gsm8k_test.jsonl"),
                 "ood": str(FIXTURES / "math_test.jsonl"), "cache_dir": str(tmp_path / "hf")},
        "sample": {"backend": "compact", "n_samples": 2, "n_eval_samples": 2, "max_new_tokens": 24},
        "train": {"lora_r": 4, "lora_alpha": 8, "batch_size": 4, "gold_epochs": 1.0, "sft_learning_rate": 1e-3,
                  "warmup_steps": 0, "lr_scheduler": "constant"},
        "evaluate": {"ks": [1, 2], "diversity_per_problem": 2, "embedding_model": "", "bootstrap": 0},
    }
    path = tmp_path / "gsm8k_local.yaml"
    path.write_text(yaml.safe_dump(recipe))
    root = pipeline.run(str(path), runs_root=tmp_path / "runs", organism_root=organism_root, log=lambda *a: None)
    paths = artifacts.RunPaths(root)
    stages = json.loads(paths.manifest.read_text())["stages"]
    assert sorted(stages) == ["1/evaluate", "1/sample", "1/train", "1/verify", "prepare"]
    log = json.loads(paths.train_log(1).read_text())
    assert log["kind"] == "gold" and log["rows"] == 12 and log["base"] == str(m0)  # one gold solution each
    assert artifacts.sha256(paths.model(1) / "model.safetensors") != artifacts.sha256(m0 / "model.safetensors")
    ood_problems = [json.loads(line) for line in paths.problems("ood").read_text().splitlines()]
    assert ood_problems and {p["task"] for p in ood_problems} == {"math"}  # MATH algebra (paper §5.3)
    ood = Run(paths.root).graded(1, "ood")
    assert len(ood) == len(ood_problems) * 3 and ood["status"].notna().all()  # greedy + 2 samples each
    metrics = json.loads(paths.metrics(1).read_text())
    assert {"test", "ood"} <= set(metrics)


def test_a_missing_local_model_fails_before_any_work(tmp_path):
    from selfimprove.config import RecipeError

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "gsm8k", "model": str(tmp_path / "no_such_model"),
                                      "data": {"train": str(FIXTURES / "gsm8k.jsonl"),
                                               "test": str(FIXTURES / "gsm8k_test.jsonl")}}))
    with pytest.raises(RecipeError, match="no_such_model.*is not a folder"):
        pipeline.run(str(recipe), runs_root=tmp_path / "runs", log=lambda *a: None)
    assert not (tmp_path / "runs").exists()
