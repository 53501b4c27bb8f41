"""The `compact` sampler (selfimprove/sample.py) against transformers' own `generate` on the tiny organism:
greedy tokens equal, the nucleus rule equal to TopPLogitsWarper and its draws in proportion, seeded, and
finished sequences really leave the batch."""

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
        ours = torch.zeros_like(logits, dtype=torch.bool).scatter(1, ids, weights > 0)
        theirs = ~TopPLogitsWarper(p)(None, logits.clone()).isinf()
        if candidates >= logits.shape[1] or p == 1.0:
            assert ids.shape[1] == logits.shape[1]
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


def test_finished_sequences_leave_the_batch(compact, prompts):
    sizes = []
    forward = compact.model.forward

    def spy(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    compact.model.forward = spy
    try:
        out = compact.generate(prompts[:8], n=1, temperature=0.0, top_p=1.0, max_new_tokens=64, batch_size=8, seed=0)
    finally:
        compact.model.forward = forward
    lengths = [c[0].n_tokens for c in out]
    # the prompt pass, then one pass per new token; finished sequences leave once an eighth has finished
    expected, batch = [8], list(lengths)
    for step in range(max(lengths) - 1):
        done = sum(n <= step + 1 for n in batch)
        if done * 8 >= len(batch):
            batch = [n for n in batch if n > step + 1]
        expected.append(len(batch))
    assert sizes == expected
    assert min(lengths) < max(lengths) and sizes[-1] < 8  # so the batch did shrink
