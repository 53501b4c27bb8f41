"""The model organism: tokenizer properties, save/load by path with the Auto classes, caching."""

import json

import pytest

from selfimprove import organism

TINY = organism.OrganismConfig(hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32, pretrain_steps=3,
                               sft_steps=3, batch_size=4, warmup_steps=1,
                               data={"n_train": 40, "n_test": 10, "n_ood": 10})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("org")
    return organism.ensure(TINY, root, log=lambda *a: None)


def test_tokenizer_splits_every_digit_and_roundtrips():
    tok = organism.train_tokenizer(["Mia has 12 cards.\n12 + 305 = 317\n#### 317"] * 20, 300)
    pieces = tok.tokenize("4096 + 17 = 4113")
    digits = [p.lstrip("Ġ") for p in pieces if any(ch.isdigit() for ch in p)]
    assert all(len(d) == 1 for d in digits) and "".join(digits) == "409617" + "4113"
    text = "Omar has 7 shells. 3 * 4 = 12\n#### 19"
    assert tok.decode(tok(text)["input_ids"]) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "Q?"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nQ?<|assistant|>\n"
    chat = tok.apply_chat_template([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}],
                                   tokenize=False)
    assert chat == "<|user|>\nQ?<|assistant|>\nA<|end|>"
    assert tok.eos_token == "<|end|>" and tok.padding_side == "left"


def test_models_load_by_path_with_auto_classes(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("M0", "M1"):
        tok = AutoTokenizer.from_pretrained(built / name)
        model = AutoModelForCausalLM.from_pretrained(built / name)
        assert model.config.model_type == "llama" and model.config.hidden_size == 16
        enc = tok(organism.chat_prompt(tok, "Mia has 3 cards."), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape[1] == enc["input_ids"].shape[1] + 3 or tok.eos_token_id in out[0].tolist()


def test_m0_and_m1_differ_and_build_record_is_written(built):
    from safetensors.torch import load_file

    m0 = load_file(str(built / "M0" / "model.safetensors"))
    m1 = load_file(str(built / "M1" / "model.safetensors"))
    assert any(not (m0[k] == m1[k]).all() for k in m0)
    record = json.loads((built / "build.json").read_text())
    assert record["digest"] == TINY.digest() and record["n_params"] > 0


def test_cache_is_reused_and_keyed_by_config(built, tmp_path):
    mtime = (built / "build.json").stat().st_mtime_ns
    assert organism.ensure(TINY, built.parent, log=lambda *a: None) == built
    assert (built / "build.json").stat().st_mtime_ns == mtime
    assert organism.OrganismConfig(seed=1).digest() != organism.OrganismConfig().digest()


def test_ood_pool_never_overlaps_the_splits():
    from selfimprove import arith

    cfg = organism.OrganismConfig(data={"n_train": 200, "n_test": 50, "n_ood": 50})
    splits = arith.generate(cfg.arith)
    pool = organism.ood_training_pool(cfg, splits)
    assert len(pool) == 20
    assert {r["template"] for r in pool} <= set(arith.OOD_TEMPLATES)
    taken = {r["question"] for rows in splits.values() for r in rows}
    assert not taken & {r["question"] for r in pool}
