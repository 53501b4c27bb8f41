"""The transformers and compact samplers on a real (tiny) model: seeded, greedy is greedy, finish reasons are right."""

import pytest

from selfimprove import artifacts, data, sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["transformers", "compact"])
def sampler(tiny_run, request):
    return sample.SAMPLERS[request.param](artifacts.RunPaths(tiny_run).model(1))


@pytest.fixture(scope="module")
def prompts(tiny_run, sampler):
    return [data.render_prompt(sampler.tokenizer, p) for p in data.load_split(tiny_run, "test")[:6]]


def test_same_seed_same_samples_other_seed_other_samples(sampler, prompts):
    kw = dict(n=4, temperature=1.0, top_p=1.0, max_new_tokens=24, batch_size=8)
    a = sampler.generate(prompts, seed=1, **kw)
    assert a == sampler.generate(prompts, seed=1, **kw)
    assert a != sampler.generate(prompts, seed=2, **kw)
    assert [len(x) for x in a] == [4] * len(prompts)


def test_greedy_does_not_depend_on_batching(sampler, prompts):
    kw = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=24)
    one = sampler.generate(prompts, batch_size=1, seed=0, **kw)
    many = sampler.generate(prompts, batch_size=6, seed=5, **kw)
    assert [c[0].text for c in one] == [c[0].text for c in many]


def test_finish_reason_and_token_counts(sampler, prompts):
    out = sampler.generate(prompts, n=2, temperature=1.0, top_p=1.0, max_new_tokens=3, batch_size=4, seed=0)
    for cs in out:
        for c in cs:
            assert c.n_tokens <= 3
            assert c.finish_reason == ("stop" if c.n_tokens < 3 else c.finish_reason)
            assert "<|end|>" not in c.text


def test_greedy_refuses_more_than_one_sample(sampler, prompts):
    """generate gives one greedy sequence per prompt; n of them would hand prompt j the answers of others."""
    with pytest.raises(ValueError, match="greedy"):
        sampler.generate(prompts, n=2, temperature=0.0, top_p=1.0, max_new_tokens=8, batch_size=8, seed=0)


def test_prompts_past_the_context_are_refused_naming_them(sampler, prompts):
    context = sample.context_length(sampler)
    assert context == 512  # the organism's max_position_embeddings
    problems = [{"id": f"p{i}"} for i in range(len(prompts))] + [{"id": "long"}]
    long_prompt = prompts[0] + " 1" * 600
    sample.check_context(sampler.tokenizer, problems[:-1], prompts, max_new_tokens=128, context=context, split="test")
    with pytest.raises(ValueError, match=r"split 'test': 1 of 7 prompts do not fit the model's context of 512 "
                                         r"tokens with sample.max_new_tokens=128: long \(\d+ tokens\)"):
        sample.check_context(sampler.tokenizer, problems, prompts + [long_prompt], max_new_tokens=128,
                             context=context, split="test")
    n = len(sampler.tokenizer(prompts[0], add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match=r"p0 \("):  # room for the prompt but not for max_new_tokens
        sample.check_context(sampler.tokenizer, problems[:1], prompts[:1], max_new_tokens=513 - n, context=context,
                             split="test")
