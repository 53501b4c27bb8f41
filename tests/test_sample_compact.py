"""The `compact` sampler (selfimprove/sample.py) against transformers' own `generate` on the tiny organism:
greedy tokens equal, the nucleus rule equal to TopPLogitsWarper, seeded, and finished sequences really leave
the batch."""

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


def test_top_p_filter_is_transformers_rule():
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 50, generator=g) * 3
    for p in (0.1, 0.5, 0.95):
        ours = sample.top_p_filter(logits, p).isinf()
        theirs = TopPLogitsWarper(p)(None, logits.clone()).isinf()
        assert torch.equal(ours, theirs)
        assert (~ours).sum(-1).min() >= 1


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
