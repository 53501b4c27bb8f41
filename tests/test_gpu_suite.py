"""bench/gpu_suite.py, the one command that runs every GPU check: which parts it plans with which backends
for the packages installed, that a part past its limit is killed and reported, what its summary keeps, and
that without a CUDA GPU it stops at once (exit 2)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SUITE = Path(__file__).resolve().parent.parent / "bench" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _option(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_plan_uses_what_is_installed(suite, tmp_path):
    bare = {s["part"]: s for s in suite.plan(suite.PARTS, tmp_path / "m", tmp_path, installed=set())}
    assert _option(bare["sampling"]["cmd"], "--backends") == "transformers,compact"
    assert _option(bare["sampling"]["cmd"], "--dtype") == "bfloat16"
    assert _option(bare["train_step"]["cmd"], "--backends") == "trl"
    assert bare["smoke"] == {"part": "smoke", "skip": "needs unsloth and vllm"}
    assert "not installed" in bare["sampling"]["note"] and "not installed" in bare["train_step"]["note"]
    full = {s["part"]: s for s in suite.plan(suite.PARTS, tmp_path / "m", tmp_path, installed={"vllm", "unsloth"})}
    assert _option(full["sampling"]["cmd"], "--backends") == "transformers,compact,vllm"
    assert _option(full["train_step"]["cmd"], "--backends") == "trl,unsloth"
    assert full["smoke"]["cmd"][1].endswith("gpu_smoke.py") and not full["smoke"]["note"]
    assert sum(s["limit_s"] for s in full.values()) <= 600  # one command of the device machine


def test_a_part_past_its_limit_is_killed_and_reported(suite, tmp_path):
    slow = {"part": "sampling", "cmd": [sys.executable, "-c", "import time; print('| a |'); time.sleep(60)"],
            "limit_s": 1, "note": ""}
    result = suite.run_step(slow, tmp_path)
    assert result["exit"] == "timeout" and not result["ok"] and result["wall_s"] < 30
    quick = {"part": "tests", "cmd": [sys.executable, "-c", "print('| b | 1 |'); print('3 passed in 1s')"],
             "limit_s": 30, "note": "n"}
    assert suite.run_step(quick, tmp_path)["ok"]
    machine = {"date": "d", "gpu": "G", "torch": "t", "cuda": "c", "installed": ["-"]}
    text = suite.summary([{**result}, suite.run_step(quick, tmp_path), {"part": "smoke", "skip": "needs vllm"}],
                         machine, tmp_path)
    assert "## sampling: ran past its limit" in text and "| a |" in text
    assert "## tests: passed" in text and "| b | 1 |" in text and "3 passed in 1s" in text
    assert "## smoke: skipped (needs vllm)" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_stops_at_once(suite, capsys):
    assert suite.main(["--out-dir", "unused"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_an_unknown_part_is_refused(suite):
    with pytest.raises(SystemExit):
        suite.main(["--parts", "tests,sampels"])
