"""Where the transformers backends put the model (`sample.device`) and in which dtype (`sample.dtype`):
'auto' picks a visible CUDA GPU and vLLM's half-precision rule there, the CPU and float32 elsewhere; a GPU that
is not there is refused before any model loads. The GPU itself is exercised in tests/test_gpu.py."""

import json

import pytest
import torch

from selfimprove import artifacts, data, sample
from selfimprove.config import SampleConfig


@pytest.fixture
def gpus(monkeypatch):
    """Pretend torch sees `count` CUDA GPUs (with or without bfloat16)."""

    def set_gpus(count: int, bf16: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)

    return set_gpus


def _checkpoint(path, dtype_key, dtype):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", dtype_key: dtype}))
    return path


def test_auto_device_is_the_first_gpu_when_there_is_one(gpus):
    gpus(0)
    assert sample.torch_device("auto") == "cpu"
    gpus(2)
    assert sample.torch_device("auto") == "cuda:0"
    assert sample.torch_device("cuda:1") == "cuda:1"
    assert sample.torch_device("cpu") == "cpu"


@pytest.mark.parametrize("count, device", [(0, "cuda"), (0, "cuda:0"), (2, "cuda:2")])
def test_a_gpu_that_is_not_there_is_refused(gpus, count, device):
    gpus(count)
    with pytest.raises(ValueError, match=rf"sample.device '{device}': torch .* sees {count or 'no'} CUDA GPU"):
        sample.torch_device(device)


@pytest.mark.parametrize("saved, bf16, expected", [
    ("float32", True, torch.bfloat16),   # a float32 checkpoint runs in the GPU's half precision
    ("float32", False, torch.float16),
    ("bfloat16", True, torch.bfloat16),  # a half-precision checkpoint keeps its dtype ...
    ("float16", True, torch.float16),
    ("bfloat16", False, torch.float16),  # ... unless the GPU lacks it
    (None, True, torch.bfloat16),        # nothing recorded
])
def test_auto_dtype_on_a_gpu_follows_vllms_rule(tmp_path, gpus, saved, bf16, expected):
    gpus(1, bf16=bf16)
    model = _checkpoint(tmp_path / "m", "dtype", saved)
    assert sample.torch_dtype("auto", "cuda:0", model) == expected
    assert sample.torch_dtype("auto", "cpu", model) == torch.float32
    assert sample.torch_dtype("float32", "cuda:0", model) == torch.float32


def test_auto_dtype_reads_older_configs_and_an_adapters_base(tmp_path, gpus):
    gpus(1)
    base = _checkpoint(tmp_path / "base", "torch_dtype", "float16")  # transformers 4's key
    assert sample.torch_dtype("auto", "cuda:0", base) == torch.float16
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 8}))
    assert sample.torch_dtype("auto", "cuda:0", adapter) == torch.float16


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", ""])
def test_config_refuses_an_unknown_device(device):
    with pytest.raises(ValueError, match="'device' must be auto, cpu, cuda or cuda:N"):
        SampleConfig(run_dir="-", iteration=1, device=device)


def test_config_refuses_a_device_for_vllm():
    with pytest.raises(ValueError, match="'device' 'cpu' applies to the transformers and compact backends"):
        SampleConfig(run_dir="-", iteration=1, backend="vllm", device="cpu")
    assert SampleConfig(run_dir="-", iteration=1, backend="vllm").device == "auto"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformers", "compact"])
def test_the_sampler_loads_the_dtype_asked_for(tiny_run, backend):
    sampler = sample.SAMPLERS[backend](artifacts.RunPaths(tiny_run).model(1), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in sampler.model.parameters()} == {torch.bfloat16}
    assert sampler.model.device.type == "cpu"
    prompts = [data.render_prompt(sampler.tokenizer, p) for p in data.load_split(tiny_run, "test")[:3]]
    out = sampler.generate(prompts, n=2, temperature=1.0, top_p=0.95, max_new_tokens=8, batch_size=4, seed=0)
    assert [len(cs) for cs in out] == [2, 2, 2] and all(c.n_tokens > 0 for cs in out for c in cs)
