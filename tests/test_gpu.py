"""GPU tier (`-m gpu`): vLLM sampling and an Unsloth LoRA DPO step on a randomly initialised
Llama-3-shaped model saved locally (no downloads), each in its own process as bench/gpu_smoke.py runs them,
and the transformers backends sampling on the GPU (`sample.device` auto). Skipped where no CUDA GPU is
visible, so the default `make test` reports them as skipped.

    pip install -r requirements/gpu.txt && pip install --no-deps -e . && python -m pytest -m gpu tests/test_gpu.py
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the gpu tier)")]
SMOKE = Path(__file__).resolve().parent.parent / "bench" / "gpu_smoke.py"


def _smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SMOKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke():
    return _smoke()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smoke):
    out = tmp_path_factory.mktemp("gpu") / "model"
    info = smoke.build_model(out, layers=1)
    assert info["parameters"] > 2e8  # one Llama-3-8B-shaped layer and the embeddings
    return out


def test_machine_check_reports_the_gpu(smoke):
    pytest.importorskip("vllm")
    pytest.importorskip("unsloth")
    info = smoke.check_machine()
    assert info["gpu"] and info["versions"]["vllm"] and info["versions"]["unsloth"]


def test_vllm_samples_n_responses_per_prompt(smoke, model_dir):
    pytest.importorskip("vllm")
    out = smoke._child("vllm", model_dir, ["--prompts", "8", "--n", "4", "--max-tokens", "16"])
    assert out["ok"], out.get("error")
    assert out["sample"]["completions"] == 8 * 4 and out["sample"]["tokens"] == 8 * 4 * 16
    assert out["greedy"]["completions"] == 8 and out["sample"]["tokens_per_s"] > 0


def test_unsloth_lora_dpo_step_changes_the_adapter(smoke, model_dir):
    pytest.importorskip("unsloth")
    out = smoke._child("unsloth", model_dir, ["--dpo-steps", "1", "--dpo-batch", "2"])
    assert out["ok"], out.get("error")
    changed, total = map(int, out["lora_b_changed"].split("/"))
    assert total == 7 and changed == total  # LoRA B of every linear layer of the one decoder layer moved
    assert len(out["loss"]) == 1 and out["loss"][0] > 0


@pytest.mark.parametrize("backend", ["transformers", "compact"])
def test_transformers_backends_sample_on_the_gpu(model_dir, backend):
    from selfimprove import sample

    sampler = sample.SAMPLERS[backend](model_dir)  # device and dtype auto: the GPU, the checkpoint's bfloat16
    assert sampler.model.device.type == "cuda" and sampler.model.dtype == torch.bfloat16
    prompts = json.loads((model_dir / "prompts.json").read_text())[:8]
    kw = dict(n=4, temperature=0.75, top_p=0.95, max_new_tokens=16, batch_size=32)
    out = sampler.generate(prompts, seed=0, **kw)
    assert [len(cs) for cs in out] == [4] * 8 and all(0 < c.n_tokens <= 16 for cs in out for c in cs)
    assert out == sampler.generate(prompts, seed=0, **kw)  # a rerun of a stage draws the same samples
    greedy = sampler.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=16, batch_size=32, seed=0)
    assert [len(cs) for cs in greedy] == [1] * 8
