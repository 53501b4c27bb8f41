"""Pins, for every shipped recipe and a few overrides, the run's digest and everything built from the recipe:
every stage config at every iteration of every member (what stagecache's inputs keys hash), the deep, verdict,
organism and data configs, and the config a run's manifest records. None may move: a run made before would
look changed (its digest), or have its stages computed again (their inputs keys)."""

import hashlib
import json
from dataclasses import asdict

import pytest

from selfimprove import config, pipeline, stagecache

R = pipeline.RECIPES

# recipe (under notebooks/params): (digest, hash of every config built from it and the recorded config). The
# second hash was taken anew once, when it went from each stage config's every field to what its inputs key holds
# (stagecache.settings), in the change that added schema.LATER_FIELDS: with the code before that change, every
# recipe and override below but the demo's gave the same new hashes.
RECIPES = {
    # demo: moved on purpose when make demo went to 20 minutes (sample.threads 0, score_samples 1, deep 32), and
    # when the gold control took M1's OOD-template share and the SFT arm's row budget (gold_ood_share, gold_rows)
    "demo.yaml": ("9dadc6bb7fd55403", "da2dfd0efd5e2e3a"),
    "tiny.yaml": ("95d7499a54fc2678", "86e1b702654b9934"),
    "paper/llama2-7b_csqa.yaml": ("6fe733e42b66285b", "531058e412b4e329"),
    "paper/llama2-7b_gsm8k.yaml": ("b559a59249fc7504", "a1c52453aa8feb2c"),
    "paper/llama2-7b_math.yaml": ("e8b85ac1b1005fd1", "f464ff6d73e8081e"),
    "paper/llama2-7b_mbpp.yaml": ("e1b65cb34863e87d", "508d0c1f1a2d8eb7"),
    "paper/llama3-8b_csqa.yaml": ("fbeb3a14e7a201a4", "87a1a5e2767f61a5"),
    "paper/llama3-8b_gsm8k.yaml": ("383a3cc7d7ded2c7", "0c15582a08a0172b"),
    "paper/llama3-8b_math.yaml": ("e48f31ffcca3c458", "2179e4e662ffac86"),
    "paper/llama3-8b_mbpp.yaml": ("982fbc7c71c630c8", "f9927c0ae1034623"),
    "paper/mistral-7b_csqa.yaml": ("9e71b6dede9d5169", "39871c5c3747d3d9"),
    "paper/mistral-7b_gsm8k.yaml": ("865e96bf7fafff3b", "d25764f6b52955c8"),
    "paper/mistral-7b_math.yaml": ("54c81653270a68fa", "b80c5d5fd108caae"),
    "paper/mistral-7b_mbpp.yaml": ("eed8dd7ca7f5b76d", "0743e8411af7dc90"),
    "small/qwen2.5-0.5b_gsm8k.yaml": ("a053a15047c723c9", "2d40a38acff7418d"),
    "small/qwen2.5-0.5b_math.yaml": ("9a4860caa56fddcc", "ca498f0890d53ec8"),
    "small/qwen2.5-1.5b_gsm8k.yaml": ("2e5802268603265f", "4ecc6bdfc27f97b3"),
    "small/qwen2.5-1.5b_math.yaml": ("9d92eebe2cafcf87", "40bc5a1d5fcec5ff"),
}
OVERRIDES = [  # recipe, --set overrides, digest, hash of what is built
    ("tiny.yaml", ("sample.n_samples=6",), "8f64e11374352462", "db4f44a50ad50534"),
    ("tiny.yaml", ("train.lora_r=0",), "196737d30bde60b4", "fdd565d9a7ba504c"),
    ("tiny.yaml", ("verdict.ood_drop=0.02",), "95d7499a54fc2678", "43d19912cd7543a6"),
    ("tiny.yaml", ("deep.problems=0",), "95d7499a54fc2678", "1c0db630167e6bc4"),
    ("tiny.yaml", ("organism.data.n_fresh=900",), "09cd05a3aad12b4a", "b9cc07e9d72f9a84"),
    ("tiny.yaml", ("evaluate.ks=[1,2]", "seed=3"), "b36275ef30c9c97c", "ee29d39cf7cd6543"),
    ("tiny.yaml", ("sample.temperature=0.5", "train.loss_type=[sigmoid]", "train.loss_weights=[1.0]"),
     "32dfe430577ed7b0", "8c4d4d700378bb7a"),
    ("paper/llama3-8b_gsm8k.yaml", ("sample.n_samples=4",), "d677abc6cd658d6e", "a50df0282b861604"),
    ("paper/llama3-8b_gsm8k.yaml", ("train.lora_r=0",), "04c326194aad878b", "5ee3f53ab209fc1d"),
    ("paper/llama3-8b_gsm8k.yaml", ("data.limit_train=100",), "60ae6d9c325bf751", "ad52c1410a4318de"),
    ("demo.yaml", ("verdict.ood_drop=0.02",), "9dadc6bb7fd55403", "51bed71b99f6fe37"),
]


def recorded(cfg: config.RunConfig) -> dict:
    """What pipeline.run_config records as the run's config in its manifest."""
    return cfg.recipe()


def built(cfg: config.RunConfig) -> str:
    """A hash of every config built from `cfg` (of each stage config, what its inputs key holds:
    stagecache.settings) and of the config its manifest records."""
    out = []
    for m in [cfg.member(p) for p in cfg.paradigms] if cfg.is_study else [cfg]:
        for t in range(1, cfg.iterations + 1):
            for stage in config.STAGES:
                sc = m.stage(stage, t, "runs/x")
                out.append([m.name, t, stage, type(sc).__name__, stagecache.settings(stage, t, sc)])
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


def test_a_later_field_at_its_old_value_keeps_the_stage_key():
    """schema.LATER_FIELDS: at the value that computes what came before them, they are not in a stage's
    settings (a run made before keeps its stages); at any other value they are."""
    cfg = config.load_recipe(R / "tiny.yaml")
    plain = stagecache.settings("train", 2, cfg.stage("train", 2, "r"))
    for key, old in config.LATER_FIELDS.items():
        assert key not in plain
        same = config.load_recipe(R / "tiny.yaml", [f"train.{key}={old}"]).stage("train", 2, "r")
        assert stagecache.settings("train", 2, same) == plain
        moved = config.load_recipe(R / "tiny.yaml", [f"train.{key}=1"]).stage("train", 2, "r")
        assert stagecache.settings("train", 2, moved) == {**plain, key: getattr(moved, key)}
