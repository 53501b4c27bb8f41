"""Recipes and stage configs.

A recipe is a small YAML file (notebooks/params/<name>.yaml) with run-level keys and one section per stage;
layering is dataclass defaults < recipe < `--set section.key=value` on the command line. Each stage has one
frozen dataclass whose fields are exactly its notebook's `parameters` cell (STYLE.md H2); the pipeline fills
the shared fields (run_dir, iteration, iterations, task, seed) and the recipe section fills the rest.

Everything is validated before any heavy work: an unknown key, a value of the wrong type or out of range
fails at once with a message naming the recipe, the key and what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml

TASKS = ("arith",)  # tasks whose problems a run can prepare; later tasks add their loaders here
PARADIGMS = ("dpo",)  # F_t for t >= 2 (paper.md §2.3)
SPLITS = ("train", "test", "ood")


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float: YAML 1.1 (PyYAML) wants a dot (`1.0e-4`) and would
    hand the string '1e-4' to a float field; YAML 1.2's float syntax, as in recipes people write."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_yaml(text: str):
    """A recipe or a command-line value as YAML (`learning_rate: 1e-4` is a float)."""
    return yaml.load(text, Loader=_YamlLoader)


class RecipeError(ValueError):
    """A recipe or stage parameter is wrong; the message names where and what."""


def _check_type(where: str, name: str, value, hint) -> None:
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return
        hint = next(h for h in options if h is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise RecipeError(f"{where}: '{name}' must be a list of {item.__name__}, got {value!r}")
        for v in value:
            _check_type(where, name, v, item)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: '{name}' must be a mapping, got {value!r}")
        return
    ok = (isinstance(value, bool) if hint is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) if hint is float else
          isinstance(value, int) and not isinstance(value, bool) if hint is int else isinstance(value, hint))
    if not ok:
        raise RecipeError(f"{where}: '{name}' must be {hint.__name__}, got {value!r} ({type(value).__name__})")


def build(cls, values: dict, where: str, hidden: tuple[str, ...] = ()):
    """`cls(**values)` with every key and type checked and a readable error for any mistake. `hidden` fields
    are left out of the valid keys an error lists (the pipeline sets them)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key, value in values.items():
        if key not in names:
            shown = [n for n in names if n not in hidden]
            close = difflib.get_close_matches(key, shown, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(sorted(shown))}")
        _check_type(where, key, value, hints[key])
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
               and f.name not in values]
    if missing:
        raise RecipeError(f"{where}: missing required key(s): {', '.join(missing)}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{where}: {e}") from None


class StageConfig:
    """Shared behaviour of the stage dataclasses."""

    @classmethod
    def from_namespace(cls, ns: dict):
        """Build from a notebook's globals (its parameters cell plus papermill's injected cell)."""
        return build(cls, {f.name: ns[f.name] for f in fields(cls) if f.name in ns}, f"{cls.__name__} parameters")


LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _list(*items):
    """A list default for a frozen dataclass field."""
    return field(default_factory=lambda: list(items))


def _positive(obj, *names):
    for n in names:
        if getattr(obj, n) <= 0:
            raise ValueError(f"'{n}' must be > 0, got {getattr(obj, n)}")


@dataclass(frozen=True)
class SampleConfig(StageConfig):
    run_dir: str
    iteration: int
    iterations: int = 4
    task: str = "arith"
    seed: int = 0
    backend: str = "transformers"  # sampling backend: transformers (CPU/GPU)
    n_samples: int = 8  # N responses per training problem, the data for M(t+1) (paper: 50; organism.md: 8)
    n_eval_samples: int = 8  # responses per test/OOD problem, for pass@k
    temperature: float = 0.75  # paper.md §2.4
    top_p: float = 0.95  # paper.md §2.4
    max_new_tokens: int = 128  # our choice: 3x the longest arith gold solution
    problems_per_iteration: int = 600  # training problems drawn each iteration, 0 for all (organism.md: 600)
    batch_size: int = 256  # sequences per generate call (fastest measured on 2 CPU cores for the organism)
    threads: int = 0  # torch threads, 0 for the torch default

    def __post_init__(self):
        _positive(self, "n_samples", "n_eval_samples", "max_new_tokens", "batch_size", "iteration", "iterations")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"'top_p' must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"'temperature' must be > 0 (greedy decoding is always run for test/ood), "
                             f"got {self.temperature}")
        if self.backend not in ("transformers",):
            raise ValueError(f"'backend' must be one of: transformers; got {self.backend!r}")
        if self.problems_per_iteration < 0:
            raise ValueError("'problems_per_iteration' must be >= 0 (0 = every training problem)")

    @property
    def splits(self) -> list[str]:
        # M_T trains nothing, so its training-set samples would be unused.
        return (["train"] if self.iteration < self.iterations else []) + ["test", "ood"]


@dataclass(frozen=True)
class VerifyConfig(StageConfig):
    run_dir: str
    iteration: int
    iterations: int = 4
    task: str = "arith"
    seed: int = 0
    pairing: str = "disjoint"  # DPO pair rule: disjoint (DIVE code, paper.md §2.5) or cross (any correct x incorrect)
    max_pairs_per_problem: int = 4  # cap P per problem (organism.md: 4; DIVE paper: 5)
    timeout_s: float = 10.0  # wall-clock limit per response, its worker killed past it (our choice)
    workers: int = 2  # grading processes (our choice: the 2 cores of the reference machine)
    memory_mb: int = 2048  # address-space limit of each grading process (our choice)

    def __post_init__(self):
        from .pairs import PAIRINGS

        if self.pairing not in PAIRINGS:
            raise ValueError(f"'pairing' must be one of: {', '.join(PAIRINGS)}; got {self.pairing!r}")
        _positive(self, "max_pairs_per_problem", "timeout_s", "workers")
        if self.memory_mb < 256:
            raise ValueError(f"'memory_mb' must be >= 256, got {self.memory_mb}")


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    run_dir: str
    iteration: int
    iterations: int = 4
    task: str = "arith"
    seed: int = 0
    paradigm: str = "dpo"  # F_t for t from 2 on, one of PARADIGMS
    backend: str = "trl"  # TRL + PEFT (CPU and GPU)
    learning_rate: float = 5e-6  # our choice for 7B-scale LoRA DPO; the organism recipe sets its own
    epochs: float = 1.0  # passes over the iteration data (DIVE: 1 epoch per iteration)
    lr_scheduler: str = "cosine"  # transformers lr_scheduler_type (DIVE SFT: cosine)
    warmup_steps: int = 5  # optimizer steps of linear warmup (our choice)
    batch_size: int = 16  # pairs per device step
    grad_accum: int = 1  # gradient accumulation steps
    beta: float = 0.1  # DPO beta (paper.md §9: configurable; 0.1 is the TRL default)
    loss_type: list[str] = _list("sigmoid", "sft")  # TRL loss_type list; sft adds NLL on the chosen response
    loss_weights: list[float] = _list(1.0, 1.0)  # one weight per loss_type
    lora_r: int = 16  # LoRA rank, 0 for full-parameter training
    lora_alpha: int = 32  # LoRA scale numerator, the update is scaled by alpha over r
    lora_dropout: float = 0.0  # LoRA dropout
    target_modules: list[str] = _list(*LLAMA_LINEAR)  # LoRA on every linear layer
    max_length: int = 512  # tokens of prompt + response kept by TRL
    threads: int = 0  # torch threads, 0 for the torch default

    def __post_init__(self):
        if self.paradigm not in PARADIGMS:
            raise ValueError(f"'paradigm' must be one of: {', '.join(PARADIGMS)}; got {self.paradigm!r}")
        if self.backend not in ("trl",):
            raise ValueError(f"'backend' must be one of: trl; got {self.backend!r}")
        if len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"'loss_weights' needs one weight per loss_type {self.loss_type}, "
                             f"got {self.loss_weights}")
        _positive(self, "learning_rate", "epochs", "batch_size", "grad_accum", "beta", "lora_alpha", "max_length")
        if self.lora_r < 0:
            raise ValueError(f"'lora_r' must be >= 0 (0 = full-parameter training), got {self.lora_r}")


@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    run_dir: str
    iteration: int
    iterations: int = 4
    task: str = "arith"
    seed: int = 0
    ks: list[int] = _list(1, 2, 4, 8)  # k values of pass@k, each at most sample.n_eval_samples
    diversity_per_problem: int = 4  # responses per diversity set (correct, incorrect alike), 0 for all (organism.md: 4)
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"  # embedding diversity model, empty to skip
    embedding_problems: int = 100  # problems per split and group whose sets are embedded, 0 for all (our choice)
    embedding_splits: list[str] = _list("test")  # splits with embedding diversity (paper Figure 4: in-domain)
    cache_dir: str = "data/cache"  # embedding cache folder, relative to the working directory (our choice)
    bootstrap: int = 1000  # bootstrap resamples over problems for 95% intervals, 0 for none (our choice)

    def __post_init__(self):
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"'ks' must be a non-empty list of integers >= 1, got {self.ks}")
        if self.diversity_per_problem < 0 or self.diversity_per_problem == 1:
            raise ValueError(f"'diversity_per_problem' must be 0 (all responses) or >= 2 (a set of one response "
                             f"has no pairs), got {self.diversity_per_problem}")
        if not set(self.embedding_splits) <= {"test", "ood"}:
            raise ValueError(f"'embedding_splits' must be a subset of ['test', 'ood'], got {self.embedding_splits}")
        if self.embedding_problems < 0:
            raise ValueError(f"'embedding_problems' must be >= 0 (0 = every problem), got {self.embedding_problems}")
        if self.bootstrap < 0:
            raise ValueError(f"'bootstrap' must be >= 0 (0 = no intervals), got {self.bootstrap}")


STAGES = {"train": TrainConfig, "sample": SampleConfig, "verify": VerifyConfig, "evaluate": EvaluateConfig}
SHARED = ("run_dir", "iteration", "iterations", "task", "seed")  # filled by the pipeline, not by a section


@dataclass(frozen=True)
class RunConfig:
    name: str  # run directory name under the runs root
    iterations: int = 4  # T: M1 from gold SFT, then T-1 self-improvement iterations (paper: T = 5)
    seed: int = 0
    task: str = "arith"
    paradigm: str = "dpo"
    organism: dict = field(default_factory=dict)  # organism.OrganismConfig overrides (model and data)
    sample: dict = field(default_factory=dict)
    verify: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"'iterations' must be >= 1, got {self.iterations}")
        if self.task not in TASKS:
            raise ValueError(f"'task' must be one of: {', '.join(TASKS)}; got {self.task!r}")
        if self.paradigm not in PARADIGMS:
            raise ValueError(f"'paradigm' must be one of: {', '.join(PARADIGMS)}; got {self.paradigm!r}")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def organism_config(self):
        from .organism import OrganismConfig

        return build(OrganismConfig, self.organism, f"recipe '{self.name}', section 'organism'")

    def stage(self, stage: str, iteration: int, run_dir: str | Path):
        """The validated config of `stage` at `iteration`."""
        section = getattr(self, stage)
        reserved = SHARED + (("paradigm",) if stage == "train" else ())
        for key in section:
            if key in reserved:
                raise RecipeError(f"recipe '{self.name}', section '{stage}': '{key}' is set at the top level")
        values = {**section, "run_dir": str(run_dir), "iteration": iteration, "iterations": self.iterations,
                  "task": self.task, "seed": self.seed}
        if stage == "train":
            values["paradigm"] = self.paradigm
        return build(STAGES[stage], values, f"recipe '{self.name}', section '{stage}'", hidden=reserved)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`section.key=value` or `key=value` strings over a raw recipe; values are parsed as YAML."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected key=value or section.key=value")
        key, value = item.split("=", 1)
        *section, leaf = key.strip().split(".")
        target = out
        for s in section:
            target = target.setdefault(s, {})
            if not isinstance(target, dict):
                raise RecipeError(f"override {item!r}: '{s}' is not a section")
        target[leaf] = load_yaml(value)
    return out


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load and fully validate a recipe: the run keys, the organism and every stage at every iteration."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe not found: {path}")
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of keys, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    raw.setdefault("name", path.stem)
    cfg = build(RunConfig, raw, f"recipe {path}")
    cfg.organism_config()
    for t in range(1, cfg.iterations + 1):
        for stage in STAGES:
            cfg.stage(stage, t, "<run_dir>")
    sample = cfg.stage("sample", 1, "<run_dir>")
    evaluate = cfg.stage("evaluate", 1, "<run_dir>")
    if max(evaluate.ks) > sample.n_eval_samples:
        raise RecipeError(f"recipe {path}: evaluate.ks {evaluate.ks} needs sample.n_eval_samples >= "
                          f"{max(evaluate.ks)} (pass@k is defined for k <= n), got {sample.n_eval_samples}")
    if evaluate.diversity_per_problem > sample.n_eval_samples:
        raise RecipeError(f"recipe {path}: evaluate.diversity_per_problem {evaluate.diversity_per_problem} needs "
                          f"sample.n_eval_samples >= {evaluate.diversity_per_problem} (no problem would have a "
                          f"full diversity set), got {sample.n_eval_samples}")
    return cfg


def resolve_recipe(name_or_path: str, recipes_dir: Path) -> Path:
    """A recipe by path, or by name from notebooks/params/."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    candidate = recipes_dir / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(x.stem for x in recipes_dir.glob("*.yaml"))
        raise RecipeError(f"no recipe named '{name_or_path}' in {recipes_dir}; known: {', '.join(known)}")
    return candidate
