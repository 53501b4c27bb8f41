"""Pins, for every shipped recipe and a few overrides, the run's digest and everything built from the recipe:
every stage config at every iteration of every member (what stagecache's inputs keys hash), the deep, verdict,
organism and data configs, and the config a run's manifest records. None may move: a run made before would
look changed (its digest), or have its stages computed again (their inputs keys)."""

import hashlib
import json
from dataclasses import asdict

import pytest

from selfimprove import config, pipeline

R = pipeline.RECIPES

# recipe (under notebooks/params): (digest, hash of every config built from it and the recorded config)
RECIPES = {
    # demo: moved once, on purpose, when make demo went to 20 minutes (sample.threads 0, score_samples 1, deep 32)
    "demo.yaml": ("f30b368f511679ee", "487a7fcc80535a77"),
    "tiny.yaml": ("95d7499a54fc2678", "145b6dbe69fec799"),
    "paper/llama2-7b_csqa.yaml": ("6fe733e42b66285b", "43568905d8524ead"),
    "paper/llama2-7b_gsm8k.yaml": ("b559a59249fc7504", "9a5fa99bb98d23b9"),
    "paper/llama2-7b_math.yaml": ("e8b85ac1b1005fd1", "42cb1ae709d7135f"),
    "paper/llama2-7b_mbpp.yaml": ("e1b65cb34863e87d", "d1d42ff55b2d3d55"),
    "paper/llama3-8b_csqa.yaml": ("fbeb3a14e7a201a4", "0a4d92140759747b"),
    "paper/llama3-8b_gsm8k.yaml": ("383a3cc7d7ded2c7", "22993c0804867b8d"),
    "paper/llama3-8b_math.yaml": ("e48f31ffcca3c458", "b1a59433187b78f1"),
    "paper/llama3-8b_mbpp.yaml": ("982fbc7c71c630c8", "8061be0a87853da6"),
    "paper/mistral-7b_csqa.yaml": ("9e71b6dede9d5169", "e07ea2416074bddc"),
    "paper/mistral-7b_gsm8k.yaml": ("865e96bf7fafff3b", "964a816d5f908a66"),
    "paper/mistral-7b_math.yaml": ("54c81653270a68fa", "dab697c62f727409"),
    "paper/mistral-7b_mbpp.yaml": ("eed8dd7ca7f5b76d", "3a81882a9ac2fe10"),
    "small/qwen2.5-0.5b_gsm8k.yaml": ("a053a15047c723c9", "e83f99b215ffa81a"),
    "small/qwen2.5-0.5b_math.yaml": ("9a4860caa56fddcc", "caec299a8a7ea2b9"),
    "small/qwen2.5-1.5b_gsm8k.yaml": ("2e5802268603265f", "a83c7c8fa6f90c9f"),
    "small/qwen2.5-1.5b_math.yaml": ("9d92eebe2cafcf87", "ff1fc71d74eb61e1"),
}
OVERRIDES = [  # recipe, --set overrides, digest, hash of what is built
    ("tiny.yaml", ("sample.n_samples=6",), "8f64e11374352462", "3e144373b4441f91"),
    ("tiny.yaml", ("train.lora_r=0",), "196737d30bde60b4", "90d930a68387978a"),
    ("tiny.yaml", ("verdict.ood_drop=0.02",), "95d7499a54fc2678", "6934789e778bd334"),
    ("tiny.yaml", ("deep.problems=0",), "95d7499a54fc2678", "970f3275a937e76d"),
    ("tiny.yaml", ("organism.data.n_fresh=900",), "09cd05a3aad12b4a", "d3a6c0c9056d6e4d"),
    ("tiny.yaml", ("evaluate.ks=[1,2]", "seed=3"), "b36275ef30c9c97c", "60182a54adbfad9b"),
    ("tiny.yaml", ("sample.temperature=0.5", "train.loss_type=[sigmoid]", "train.loss_weights=[1.0]"),
     "32dfe430577ed7b0", "15a03810833805ec"),
    ("paper/llama3-8b_gsm8k.yaml", ("sample.n_samples=4",), "d677abc6cd658d6e", "577e9cf06086d812"),
    ("paper/llama3-8b_gsm8k.yaml", ("train.lora_r=0",), "04c326194aad878b", "e824ca6ab69786bf"),
    ("paper/llama3-8b_gsm8k.yaml", ("data.limit_train=100",), "60ae6d9c325bf751", "53f74cbe3a85d1ac"),
    ("demo.yaml", ("verdict.ood_drop=0.02",), "f30b368f511679ee", "42bd400616c93a84"),
]


def recorded(cfg: config.RunConfig) -> dict:
    """What pipeline.run_config records as the run's config in its manifest."""
    return cfg.recipe()


def built(cfg: config.RunConfig) -> str:
    """A hash of every config built from `cfg` and of the config its manifest records."""
    out = []
    for m in [cfg.member(p) for p in cfg.paradigms] if cfg.is_study else [cfg]:
        for t in range(1, cfg.iterations + 1):
            for stage in config.STAGES:
                sc = m.stage(stage, t, "runs/x")
                out.append([m.name, t, stage, type(sc).__name__, asdict(sc)])
        out += [asdict(m.deep_config(2, "runs/x")), asdict(m.thresholds()), asdict(m.organism_config())]
        if m.task != "arith":
            out.append(asdict(m.data_config()))
    out.append(recorded(cfg))
    return hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:16]


def test_every_shipped_recipe_is_pinned():
    shipped = {str(p.relative_to(R)) for p in R.rglob("*.yaml")}
    assert shipped == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_shipped_recipe_keeps_its_digest_and_its_configs(name):
    cfg = config.load_recipe(R / name)
    assert (cfg.digest(), built(cfg)) == RECIPES[name]


@pytest.mark.parametrize("name, overrides, digest, configs", OVERRIDES,
                         ids=[f"{n}:{','.join(o)}" for n, o, _, _ in OVERRIDES])
def test_an_overridden_recipe_keeps_its_digest_and_its_configs(name, overrides, digest, configs):
    cfg = config.load_recipe(R / name, list(overrides))
    assert (cfg.digest(), built(cfg)) == (digest, configs)
