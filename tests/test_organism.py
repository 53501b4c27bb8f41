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


def test_muon_orthogonalizes_and_trains_the_hidden_matrices_only():
    import torch

    muon = organism._muon_class()
    g = torch.randn(24, 64, generator=torch.Generator().manual_seed(0))
    for m in (g, g.T):  # wide and tall
        s = torch.linalg.svdvals(muon.orthogonalize(m, 5))
        # the quintic iteration maps every singular value into about [0.7, 1.2] (KellerJordan/Muon), whatever
        # the input's spread: here from svdvals(g), a factor of ~6 apart
        assert s.min() > 0.6 and s.max() < 1.25, s
    model = organism.build_model(TINY, organism.train_tokenizer(["Mia has 1 card.\n1 + 2 = 3\n#### 3"] * 5, 300))
    muon_opt, adamw = organism.make_optimizers(model, "muon", 1e-3, 0.02)
    hidden = {id(p) for group in muon_opt.param_groups for p in group["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in hidden}
    assert names and all(p.ndim == 2 for n, p in model.named_parameters() if id(p) in hidden)
    assert not any("embed" in n or "norm" in n for n in names)
    assert len(hidden) + sum(len(g["params"]) for g in adamw.param_groups) == len(list(model.parameters()))


def test_muon_build_learns(tmp_path):
    import torch

    from selfimprove import arith

    cfg = organism.OrganismConfig(**{**TINY.__dict__, "optimizer": "muon"})
    record = organism.build(cfg, tmp_path / "muon", log=lambda *a: None)
    assert record["config"]["optimizer"] == "muon"
    rows = arith.generate(cfg.arith)["train"]
    tok = organism.train_tokenizer([f"{r['question']}\n{s}" for r in rows for s in r["solutions"]], 300)
    examples = organism._sft_examples(tok, rows)
    for muon_lr in (0.0, 0.02):  # Muon alone moves the hidden matrices; the loss falls
        model = organism.build_model(cfg, tok)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if "layers" in n and p.ndim == 2}
        losses = organism.train_lm(model, examples, steps=40, batch_size=8, lr=1e-2, warmup=5, seed=0,
                                   pad_id=tok.pad_token_id, optimizer="muon", muon_lr=muon_lr, log=lambda *a: None)
        moved = [not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before]
        assert all(moved) if muon_lr else not any(moved)
        assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="'optimizer' must be one of"):
        organism.OrganismConfig(optimizer="sgd")


def test_a_shipped_build_is_copied_not_trained_and_rebuild_trains(built, tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(organism, "SHIPPED", shipped)
    assert organism.shipped(TINY) is None
    assert organism.ship(TINY, built.parent) == shipped / TINY.digest()
    assert organism.shipped(TINY) == shipped / TINY.digest()

    def no_build(*a, **k):
        raise AssertionError("trained although a shipped build exists")

    monkeypatch.setattr(organism, "build", no_build)
    root = tmp_path / "cache"
    out = organism.ensure(TINY, root, log=lambda *a: None)
    assert out == root / TINY.digest() and not (root / (TINY.digest() + ".tmp")).exists()
    for name in ("M0", "M1"):
        assert (out / name / "model.safetensors").read_bytes() == (built / name / "model.safetensors").read_bytes()
    with pytest.raises(AssertionError, match="trained although"):
        organism.ensure(TINY, root, log=lambda *a: None, rebuild=True)
    with pytest.raises(FileNotFoundError, match="no finished build"):
        organism.ship(organism.OrganismConfig(seed=5), root)


def test_the_build_record_names_the_machine_and_torch(built):
    import torch

    record = json.loads((built / "build.json").read_text())
    assert record["built"]["torch"] == torch.__version__ and record["built"]["threads"] >= 1
