"""The roofline arithmetic of selfimprove/profiling.py (the GPU benchmarks' bound columns) against a real
model: its parameter count and the KV cache it really allocates."""

import pytest
import torch

from selfimprove import artifacts, profiling


@pytest.fixture(scope="module")
def m1(tiny_run):
    return artifacts.RunPaths(tiny_run).model(1)


def test_count_params_is_the_loaded_models(m1):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(m1)
    assert profiling.count_params(m1) == sum(p.numel() for p in model.parameters()) > 0


def test_kv_bytes_per_token_is_what_the_cache_holds(m1):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(m1, dtype=torch.float32)
    ids = torch.randint(3, model.config.vocab_size, (2, 17))
    cache = model(input_ids=ids, use_cache=True).past_key_values
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert profiling.kv_bytes_per_token(model.config, 4) * 2 * 17 == held


def test_bounds_move_the_right_way():
    kw = dict(bandwidth=3.35e12, n_params=10**9, weight_bytes=2, kv_per_token=2**17, context=500)
    one, many = profiling.decode_bound(batch=1, **kw), profiling.decode_bound(batch=64, **kw)
    assert one == pytest.approx(3.35e12 / (2e9 + 500 * 2**17))
    assert many > 10 * one  # batching shares the weight reads (21x here: the KV reads grow with it)
    assert profiling.decode_bound(batch=64, **{**kw, "context": 4000}) < many  # a longer cache costs reads
    sft, dpo = (profiling.train_bound(989e12, 10**9, k, lora=True) for k in ("sft", "dpo"))
    assert sft == pytest.approx(989e12 / 4e9) and dpo == pytest.approx(989e12 / 6e9)
    assert profiling.train_bound(989e12, 10**9, "sft", lora=False) < sft
    with pytest.raises(ValueError, match="sft or dpo"):
        profiling.train_flops_per_token(10, "ppo", lora=True)


def test_every_listed_gpu_is_found_by_its_torch_name():
    names = {"NVIDIA H200": 4.8e12, "NVIDIA H100 80GB HBM3": 3.35e12, "NVIDIA H100 NVL": 3.9e12,
             "NVIDIA H100 PCIe": 2.0e12, "NVIDIA A100-SXM4-80GB": 2.039e12, "NVIDIA A100 80GB PCIe": 1.935e12,
             "NVIDIA A100-SXM4-40GB": 1.555e12, "NVIDIA L40S": 0.864e12}
    for name, bandwidth in names.items():
        assert profiling.gpu_peaks(name)["bandwidth"] == bandwidth, name
    assert profiling.gpu_peaks("NVIDIA GeForce RTX 4090") is None


def test_stage_threads_are_set_and_given_back(monkeypatch):
    import torch

    monkeypatch.setattr(profiling, "_DEFAULT_THREADS", None)
    before = torch.get_num_threads()
    try:
        profiling.set_torch_threads(0)  # nothing set yet: nothing to do
        assert profiling._DEFAULT_THREADS is None
        profiling.set_torch_threads(1)  # sample.threads: 1
        assert torch.get_num_threads() == 1 and profiling._DEFAULT_THREADS == before
        profiling.set_torch_threads(0)  # the kernel's reset, or a stage with threads 0
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


