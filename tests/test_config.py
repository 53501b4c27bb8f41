"""Recipes: every committed recipe validates; mistakes fail at once and name the key; notebook parameters
are exactly the stage dataclass fields."""

from dataclasses import MISSING, asdict, fields
from pathlib import Path

import papermill as pm
import pytest

from selfimprove import config, pipeline

RECIPES = sorted(pipeline.RECIPES.glob("*.yaml"))


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_committed_recipe_loads(path):
    cfg = config.load_recipe(path)
    assert cfg.name == path.stem
    assert cfg.stage("sample", 1, "x").n_eval_samples >= max(cfg.stage("evaluate", 1, "x").ks)


def test_demo_recipe_runs_the_three_paradigms_and_both_controls_with_at_least_two_loop_iterations():
    cfg = config.load_recipe(pipeline.RECIPES / "demo.yaml")
    assert cfg.is_study and cfg.iterations >= 3  # M1, then two iterations of the loop at least
    assert sorted(cfg.paradigms) == ["dpo", "gold", "placebo-dpo", "sft", "sft-dpo"]
    assert cfg.paradigms.index("dpo") < cfg.paradigms.index("sft-dpo")  # SFT-DPO takes DPO's M2


@pytest.mark.parametrize("text,message", [
    ("sample: {temprature: 0.7}", r"unknown key 'temprature' \(did you mean 'temperature'\?\)"),
    ("iteratons: 3", r"unknown key 'iteratons' \(did you mean 'iterations'\?\)"),
    ("sample: {n_samples: many}", r"section 'sample'.*'n_samples' must be int, got 'many'"),
    ("sample: {top_p: 1.5}", r"top_p"),
    ("sample: {n_samples: 0}", r"'n_samples' must be > 0"),
    ("train: {loss_type: [sigmoid, sft], loss_weights: [1.0]}", r"loss_weights"),
    ("train: {pairing: best}", r"'pairing' must be one of: disjoint, cross"),
    ("task: gsm9k", r"'task' must be one of"),
    ("paradigm: ppo", r"'paradigm' must be one of"),
    ("sample: {seed: 3}", r"'seed' is set at the top level"),
    ("train: {paradigm: dpo}", r"section 'train': 'paradigm' is set at the top level"),
    ("sample: {n_sample: 3}", r"valid keys: backend, batch_size, data_parallel_size, device, dtype, enforce_eager, "
                              r"gpu_memory_utilization, m1_eval_samples, max_model_len, max_new_tokens, "
                              r"n_eval_samples, n_samples, problems_per_iteration, temperature, tensor_parallel_size, "
                              r"threads, top_p$"),
    ("organism: {hiden_size: 3}", r"section 'organism': unknown key 'hiden_size'"),
    ("organism: {data: {n_tran: 3}}", r"organism.data: unknown key 'n_tran' \(did you mean 'n_train'\?\)"),
    ("evaluate: {ks: [1, 16]}\nsample: {n_eval_samples: 8}", r"n_eval_samples >= 16"),
    ("iterations: true", r"'iterations' must be int"),
    ("- a list", r"expected a mapping"),
    ("sample: [1, 2", r"not valid YAML"),
    ("sample: {n_samples: 2024-01-01}", r"'n_samples' must be int, got '2024-01-01' \(str\)"),  # no dates
    ("sample: !!set {a, b}", r"r.yaml: values must be strings, numbers"),
    ("verdict: {ood_dorp: 0.02}", r"section 'verdict': unknown key 'ood_dorp' \(did you mean 'ood_drop'\?\); "
                                  r"valid keys: disparity_rise, diversity_drop, min_pass1_gain, ood_drop, require_ci, "
                                  r"selection_share$"),
    ("verdict: {ood_drop: -1}", r"section 'verdict': threshold 'ood_drop' must be >= 0"),
    ("verdict: {require_ci: 1}", r"section 'verdict': 'require_ci' must be bool"),
])
def test_bad_recipe_fails_naming_the_problem(tmp_path, text, message):
    with pytest.raises(config.RecipeError, match=message):
        config.load_recipe(_write(tmp_path, text))


def test_missing_recipe_and_unknown_name(tmp_path):
    with pytest.raises(config.RecipeError, match="not found"):
        config.load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(config.RecipeError, match=rf"recipe {tmp_path}: a folder, not a YAML file"):
        config.load_recipe(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(config.RecipeError, match=r"latin1.yaml: not UTF-8 text"):
        config.load_recipe(tmp_path / "latin1.yaml")
    assert config.load_recipe(_write(tmp_path, "name: 2024-01-01")).name == "2024-01-01"  # a string, not a date
    with pytest.raises(config.RecipeError, match="no recipe named 'nope'.*demo"):
        config.resolve_recipe("nope", pipeline.RECIPES)


def test_overrides_layer_over_the_recipe(tmp_path):
    p = _write(tmp_path, "sample: {n_samples: 4}")
    cfg = config.load_recipe(p, ["sample.n_samples=6", "iterations=3", "train.loss_type=[sigmoid]",
                                 "train.loss_weights=[1.0]"])
    assert cfg.stage("sample", 1, "x").n_samples == 6 and cfg.iterations == 3
    assert cfg.stage("train", 2, "x").loss_type == ["sigmoid"]
    with pytest.raises(config.RecipeError, match="unknown key 'n_sample'"):
        config.load_recipe(p, ["sample.n_sample=6"])


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-4 as a string; recipes and --set read it as a float
    p = _write(tmp_path, "train: {learning_rate: 1e-4, beta: 2E-1}")
    cfg = config.load_recipe(p)
    assert cfg.stage("train", 2, "x").learning_rate == 1e-4 and cfg.stage("train", 2, "x").beta == 0.2
    assert config.load_recipe(p, ["train.learning_rate=3e-4"]).stage("train", 2, "x").learning_rate == 3e-4
    assert [config.load_yaml(t) for t in ("1e-4", "-2e3", "1e", "1.5.3", "7")] == [1e-4, -2000.0, "1e", "1.5.3", 7]


def test_config_hash_changes_with_any_value(tmp_path):
    p = _write(tmp_path, "sample: {n_samples: 4}")
    assert config.load_recipe(p).digest() == config.load_recipe(p).digest()
    assert config.load_recipe(p).digest() != config.load_recipe(p, ["sample.n_samples=5"]).digest()


def test_verdict_thresholds_change_no_hash(tmp_path):
    """Thresholds judge the metrics and compute nothing: a run keeps its digest and every stage its config."""
    p = _write(tmp_path, "sample: {n_samples: 4}")
    plain, judged = config.load_recipe(p), config.load_recipe(p, ["verdict.ood_drop=0.05", "verdict.require_ci=false"])
    assert judged.thresholds() == config.Thresholds(ood_drop=0.05, require_ci=False)
    assert plain.thresholds() == config.Thresholds()
    assert judged.digest() == plain.digest()
    assert all(judged.stage(stage, t, "r") == plain.stage(stage, t, "r") for stage in config.STAGES for t in (1, 2))
    # the committed recipes' hashes (they changed once, when the data-building keys moved from verify: to train:
    # with the graded_<split> layout, which older run directories do not have, when the demo gained its
    # controls and full-parameter training, when it went to T = 3 at one thread per run for --jobs 2, and when the
    # gold control took M1's OOD-template share and the SFT arm's row budget)
    for name in ("demo", "tiny"):
        cfg = config.load_recipe(pipeline.RECIPES / f"{name}.yaml")
        assert cfg.verdict.given == {} and cfg.verdict == config.SECTIONS["verdict"]()
        assert cfg.digest() == {"demo": "9dadc6bb7fd55403", "tiny": "95d7499a54fc2678"}[name]


def test_sample_splits_follow_the_iteration():
    cfg = config.SampleConfig(run_dir="x", iteration=1, iterations=3)
    assert cfg.splits == ["train", "test", "ood"]
    assert config.SampleConfig(run_dir="x", iteration=3, iterations=3).splits == ["test", "ood"]


@pytest.mark.parametrize("stage", sorted(pipeline.STAGE_NOTEBOOKS))
def test_notebook_parameters_are_the_stage_fields(stage):
    nb = pipeline.NOTEBOOKS / pipeline.STAGE_NOTEBOOKS[stage]
    params = pm.inspect_notebook(str(nb))
    cls = config.STAGES[stage]
    assert set(params) == {f.name for f in fields(cls)}
    cell = next(c for c in __import__("nbformat").read(nb, 4).cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source == config.parameters_cell(cls), \
        "stale parameters cell: python -c 'from selfimprove import pipeline; pipeline.sync_parameter_cells()'"
    # the defaults in the notebook are the dataclass defaults, so the notebook runs on its own
    ns = {}
    source = next(c for c in __import__("nbformat").read(nb, 4).cells if "parameters" in c.metadata.get("tags", []))
    exec(source.source, ns)
    built = cls.from_namespace(ns)
    for f in fields(cls):
        if f.name not in ("run_dir", "iteration"):
            default = f.default if f.default_factory is __import__("dataclasses").MISSING else f.default_factory()
            assert getattr(built, f.name) == default, f.name


def test_stage_config_from_namespace_checks_types():
    with pytest.raises(config.RecipeError, match="'n_samples' must be int"):
        config.SampleConfig.from_namespace({"run_dir": "x", "iteration": 1, "n_samples": "8"})


def test_recipes_dir_is_in_the_repo():
    assert Path(pipeline.RECIPES).is_dir() and (pipeline.RECIPES / "demo.yaml").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusals on a machine without a GPU")
@pytest.mark.parametrize("override, message", [
    ("sample.device=cuda", r"sample.device 'cuda': torch .* sees no CUDA GPU"),
    ("sample.device=cuda:1", r"sample.device 'cuda:1'"),
    ("train.backend=unsloth", r"train.backend 'unsloth' needs a CUDA GPU"),
    ("train.load_in_4bit=true", r"train.load_in_4bit needs a CUDA GPU"),
    ("train.precision=bf16", r"train.precision 'bf16' needs CUDA"),
])
def test_a_recipe_this_machine_cannot_run_is_refused_before_anything_runs(tmp_path, override, message):
    with pytest.raises(config.RecipeError, match=rf"recipe 'tiny': {message}"):
        pipeline.run("tiny", overrides=[override], runs_root=tmp_path / "runs", organism_root=tmp_path / "org",
                     figures_dir=None, log=lambda *a: None)
    assert not any(tmp_path.iterdir())  # no run directory, no organism built


def test_a_backend_that_is_not_installed_is_refused_before_anything_runs(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    with pytest.raises(config.RecipeError, match=r"recipe 'tiny': sample.backend 'vllm' needs vLLM, which is not"):
        pipeline.run("tiny", overrides=["sample.backend=vllm"], runs_root=tmp_path / "runs",
                     organism_root=tmp_path / "org", figures_dir=None, log=lambda *a: None)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    ({"overrides": ["model=models/my-llama/final"]}, r"model 'models/my-llama/final' is not a folder"),
])
def test_a_wrong_model_path_is_refused_before_anything_runs(tmp_path, kwargs, message):
    with pytest.raises(config.RecipeError, match=message):
        pipeline.run("tiny", runs_root=tmp_path / "runs", organism_root=tmp_path / "org", figures_dir=None,
                     log=lambda *a: None, **kwargs)
    assert not any(tmp_path.iterdir())  # no run directory, no organism built


def test_m1_draws_m1_eval_samples_on_test_only():
    from selfimprove import sample

    class Fake:
        def generate(self, prompts, n, **kw):
            return [[sample.Completion("#### 1", 2, "stop")] * n for _ in prompts]

    problems = [{"id": "p1", "level": 1}, {"id": "p2", "level": 2}]

    def drawn(iteration, split):
        cfg = config.SampleConfig(run_dir="x", iteration=iteration, iterations=3, n_eval_samples=3, m1_eval_samples=8)
        rows = sample.sample_split(Fake(), problems, ["a", "b"], cfg=cfg, split=split, task="arith")
        return int((rows["decoding"] == "sample").sum()) // len(problems)

    assert (drawn(1, "test"), drawn(1, "ood"), drawn(2, "test")) == (8, 3, 3)
    with pytest.raises(ValueError, match="m1_eval_samples"):
        config.SampleConfig(run_dir="x", iteration=1, m1_eval_samples=-1)


def test_recipe_sections_are_typed_with_defaults_and_keep_what_the_recipe_set(tmp_path):
    cfg = config.load_recipe(_write(tmp_path, "sample: {n_samples: 6}\ntrain: {learning_rate: 1e-3}\n"
                                              "verdict: {ood_drop: 0.02}"))
    assert (cfg.sample.n_samples, cfg.sample.temperature) == (6, config.SampleConfig.temperature)
    assert (cfg.train.learning_rate, cfg.verdict.ood_drop, cfg.deep.problems) == (1e-3, 0.02, 100)
    assert cfg.organism.hidden_size == config.OrganismConfig().hidden_size and cfg.evaluate.ks == [1, 2, 4, 8]
    assert cfg.sample.given == {"n_samples": 6} and cfg.verify.given == {}
    assert cfg.recipe()["sample"] == {"n_samples": 6} and cfg.recipe()["train"] == {"learning_rate": 1e-3}
    assert config.build(config.RunConfig, cfg.recipe(), "again") == cfg
    # a stage config is its section plus the run's context
    stage = asdict(cfg.stage("sample", 2, "r"))
    assert {k: v for k, v in stage.items() if k not in config.SHARED} == cfg.sample.values()
    # a key set to its default is set: the digest hashes it, and equality sees it
    plain, explicit = config.RunConfig(name="r"), config.RunConfig(name="r", sample={"n_samples": 8})
    assert explicit.sample.n_samples == plain.sample.n_samples == 8
    assert explicit != plain and explicit.digest() != plain.digest()
    # a section made in code sets the fields it holds away from their defaults
    made = config.RunConfig(name="r", sample=config.SECTIONS["sample"](n_samples=6, temperature=0.75))
    assert made.sample.given == {"n_samples": 6}
    read = config.RunConfig(name="r", sample={"n_samples": 6})
    assert made == read and made.digest() == read.digest()


def test_a_section_has_its_configs_fields_and_defaults_but_the_context():
    for key, section in config.SECTIONS.items():
        context = config.SHARED + (("paradigm", "base_model") if key == "train" else ()) \
            if issubclass(section.config, config.StageConfig) else ()
        own = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
               for f in fields(section.config) if f.name not in context}
        assert section().values() == own and [f.name for f in fields(section)] == list(own)


def test_a_run_config_is_replaced_split_into_members_and_pickled_with_its_sections():
    import dataclasses
    import pickle

    cfg = config.load_recipe(pipeline.RECIPES / "tiny.yaml", ["paradigm=[dpo, sft]"])
    again = pickle.loads(pickle.dumps(cfg))  # lanes.py sends it to spawned processes
    assert again == cfg and again.digest() == cfg.digest() and again.sample.given == cfg.sample.given
    member = cfg.member("sft")
    assert (member.name, member.paradigm, member.sample) == ("tiny/sft", "sft", cfg.sample)
    assert member.stage("train", 2, "r").paradigm == "sft"
    changed = dataclasses.replace(cfg, sample={"n_samples": 3})
    assert changed.sample.given == {"n_samples": 3} and changed.train == cfg.train
    with pytest.raises(config.RecipeError, match=r"recipe 'x', section 'sample': unknown key 'temprature'"):
        config.RunConfig(name="x", sample={"temprature": 1.0})  # as the config is made, not when a stage is built
    with pytest.raises(config.RecipeError, match=r"recipe 'x', section 'deep': 'seed' is set at the top level"):
        config.RunConfig(name="x", deep={"seed": 1})
