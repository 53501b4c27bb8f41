"""The `compact` sampler (selfimprove/sample.py) against transformers' own `generate` on the tiny organism:
greedy tokens equal, the decode step's arithmetic the model's own, the nucleus rule equal to TopPLogitsWarper
and its draws in proportion, every sample drawn from its own seeded numbers, and the batch kept full while
sequences wait (continuous batching)."""

import pytest
import torch

from selfimprove import artifacts, data, sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tiny_run):
    return artifacts.RunPaths(tiny_run).model(1)


@pytest.fixture(scope="module")
def compact(model_dir):
    return sample.CompactSampler(model_dir)


@pytest.fixture(scope="module")
def prompts(tiny_run, compact):
    return [data.render_prompt(compact.tokenizer, p) for p in data.load_split(tiny_run, "test")[:24]]


def test_greedy_equals_generate(model_dir, compact, prompts):
    kw = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=48, batch_size=8, seed=0)
    ours = compact.generate(prompts, **kw)
    theirs = sample.TransformersSampler(model_dir).generate(prompts, **kw)
    assert [(c[0].text, c[0].n_tokens, c[0].finish_reason) for c in ours] == \
        [(c[0].text, c[0].n_tokens, c[0].finish_reason) for c in theirs]


def test_greedy_equals_generate_whatever_the_checkpoint_generation_config(model_dir, prompts, tmp_path):
    """A checkpoint's own sampling defaults (Qwen2.5-0.5B-Instruct's generation_config.json) do not reach
    generate: SampleConfig alone sets the rule, as in the compact loop and vLLM."""
    import json
    import shutil

    shutil.copytree(model_dir, tmp_path / "m")
    path = tmp_path / "m" / "generation_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                                "repetition_penalty": 1.1}))
    kw = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=48, batch_size=8, seed=0)
    ours = sample.CompactSampler(tmp_path / "m").generate(prompts, **kw)
    theirs = sample.TransformersSampler(tmp_path / "m").generate(prompts, **kw)
    assert [c[0].text for c in ours] == [c[0].text for c in theirs]


@pytest.mark.parametrize("candidates", [4, 64, 1000])  # 4: most rows fall back to the full sort
def test_nucleus_is_transformers_top_p_set(candidates):
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    # peaked rows (a few tokens hold the mass) and flat ones (the nucleus is most of the vocabulary)
    logits = torch.cat([torch.randn(32, 200, generator=g) * 6, torch.randn(32, 200, generator=g) * 0.3])
    for p in (0.1, 0.5, 0.95, 1.0):
        ids, weights = sample.nucleus(logits.softmax(-1), p, candidates)
        ours = torch.zeros_like(logits).scatter_add(1, ids, (weights > 0).float()) > 0  # padding adds 0
        theirs = ~TopPLogitsWarper(p)(None, logits.clone()).isinf()
        if candidates >= logits.shape[1] or p == 1.0:
            assert ids.shape[1] == logits.shape[1]
        if p == 0.1:  # the peaked rows' most likely token holds 0.1: a nucleus of one token, found without topk
            assert (weights[:32] > 0).sum(-1).eq(1).all()
        assert torch.equal(ours, theirs)
        assert torch.allclose(weights.sum(-1), (logits.softmax(-1) * theirs).sum(-1))  # their probabilities


def test_draw_follows_the_weights_and_the_seed():
    weights = torch.tensor([[0.5, 0.3, 0.2, 0.0, 0.0]]).repeat(20000, 1)
    a = sample.draw(weights, torch.Generator().manual_seed(1))
    assert torch.equal(a, sample.draw(weights, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, sample.draw(weights, torch.Generator().manual_seed(2)))
    freq = torch.bincount(a, minlength=5).double() / len(a)
    assert freq[3:].sum() == 0  # zero weight: never drawn
    assert torch.allclose(freq[:3], torch.tensor([0.5, 0.3, 0.2], dtype=torch.double), atol=0.015)  # > 4 sigma
    one = torch.tensor([[0.0, 0.0, 2.0]])
    assert sample.draw(one, torch.Generator().manual_seed(0)).item() == 2


def test_the_batch_stays_full_while_sequences_wait(compact, prompts):
    sizes = []
    forward = compact.decoder.forward

    def spy(*args, **kwargs):
        sizes.append(compact.decoder.slots)
        return forward(*args, **kwargs)

    compact.decoder.forward = spy
    try:
        out = compact.generate(prompts[:12], n=1, temperature=0.0, top_p=1.0, max_new_tokens=64, batch_size=4,
                               seed=0)
    finally:
        compact.decoder.forward = forward
    lengths = [c[0].n_tokens for c in out]
    assert max(sizes) == 4 and sizes == sorted(sizes, reverse=True)  # full, then shrinking once none waits
    # one decode step per token of the fullest slot: a slot that frees takes the next sequence at once, so the
    # steps are at most those of the tokens spread over 4 slots plus the longest answer (the last one to end)
    assert len(sizes) <= -(-sum(lengths) // 4) + max(lengths)
    full = sizes.count(4)
    assert full * 4 >= sum(sorted(lengths)[:8])  # 8 of the 12 answers end while all 4 slots decode


def test_the_decode_step_is_the_models_arithmetic(compact):
    """The stacked projections, `F.rms_norm` and `addmm` of `_Decoder` give the floats of the model's modules."""
    import torch.nn.functional as F

    decoder = compact.decoder
    decoder.weights()
    (n1, eps1), (w_qkv, b_qkv), (w_o, _), _, (w_gu, _), (w_down, _) = decoder.layers[0]
    layer = compact.model.model.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, compact.model.config.hidden_size, generator=g)
    with torch.inference_mode():
        assert torch.equal(F.rms_norm(x, (x.shape[-1],), n1, eps1), layer.input_layernorm(x))
        assert torch.equal(F.linear(x, w_qkv, b_qkv), torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], -1))
        assert torch.equal(torch.addmm(x, x, w_o), x + attn.o_proj(x))
        gu = F.linear(x, w_gu)
        half = gu.shape[-1] // 2
        assert torch.equal(torch.addmm(x, F.silu(gu[:, :half]) * gu[:, half:], w_down), x + mlp(x))


def test_samples_are_drawn_from_each_rows_own_numbers(compact, prompts):
    """A sample's draws come from its own seed (the call's seed, its prompt's index, its index): the batch size,
    and so which samples decode together, does not change them."""
    kw = dict(n=3, temperature=1.0, top_p=0.9, max_new_tokens=24, seed=7)
    assert compact.generate(prompts[:6], batch_size=4, **kw) == compact.generate(prompts[:6], batch_size=18, **kw)
    assert compact.generate([], batch_size=4, **kw) == []
    a = sample.row_uniforms(7, 2, 3, 24)
    assert torch.equal(a, sample.row_uniforms(7, 2, 3, 24)) and a.shape == (3, 24)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a, sample.row_uniforms(7, 3, 3, 24))


def test_other_models_decode_with_transformers_forward(model_dir, compact, prompts):
    """Without `_Decoder` (a model it does not support) the compact backend decodes with the model's forward and
    DynamicCache, finished sequences dropped from the batch; greedy is still generate's."""
    kw = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=48, batch_size=8, seed=0)
    ours = compact.generate(prompts, **kw)
    decoder, compact.decoder = compact.decoder, None
    try:
        fallback = compact.generate(prompts, **kw)
        sampled = compact.generate(prompts[:4], n=2, temperature=1.0, top_p=0.9, max_new_tokens=16, batch_size=8,
                                   seed=0)
    finally:
        compact.decoder = decoder
    assert [c[0].text for c in fallback] == [c[0].text for c in ours]
    assert [len(cs) for cs in sampled] == [2] * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cache_memory_is_zeroed_and_writable(dtype):
    t = sample._zeros((3, 2, 5, 4), dtype, "cpu")
    assert t.shape == (3, 2, 5, 4) and t.dtype == dtype and not t.any()
    t[1, :, 2] = 1.5
    assert t.sum().item() == 1.5 * 8


def test_the_same_samples_at_one_and_two_threads(model_dir, prompts):
    """`--jobs` gives each run of a study fewer threads (lanes.py); the sampler draws the same responses."""
    kw = dict(n=4, temperature=0.75, top_p=0.95, max_new_tokens=48, batch_size=32, seed=0)
    texts, before = {}, torch.get_num_threads()
    try:
        for threads in (1, 2):
            got = sample.CompactSampler(model_dir, threads=threads).generate(prompts, **kw)
            assert torch.get_num_threads() == threads
            texts[threads] = [[c.text for c in cs] for cs in got]
    finally:
        torch.set_num_threads(before)
    assert texts[1] == texts[2]
