"""The grid: many recipes run one after another, resumed, and their metrics gathered into one table.

    selfimprove grid notebooks/params/paper --dry-run        the plan: recipes, runs, which are done
    selfimprove grid paper --only 'paper_mistral*'          run (or resume) the selected runs
    selfimprove recipes paper                               (re)write notebooks/params/paper/ from this module

Every recipe is loaded and validated first, and every error is listed before any run starts. Each run then
goes through `pipeline.run`, which resumes it from its manifest (a finished run is skipped here without
loading a model). A recipe that fails is reported and the grid goes on; the failures are listed at the end.
Last, every run's tidy metrics (`metrics.collect`) are gathered with recipe/run/model/task/paradigm columns
into `<runs_root>/grid/metrics.csv`, and greedy test pass@1 per iteration into `<runs_root>/grid/pass1.md`.

A recipe whose `paradigm` is a list is a study: one run per paradigm, in `<runs_root>/<name>/<paradigm>/`.
The grid runs a whole study with one `pipeline.run` call (the pipeline shares the stages its runs have in
common); when `--only` picks some of its runs, each runs through `pipeline.run_config`, still sharing the
stages its sibling runs have finished.

The recipe generator (`paper_recipes`, `small_recipes`) writes the paper's grid (paper Figure 1 and §4.1: three base
models x four tasks x three paradigms, T = 5, N = 50, temperature 0.75, top-p 0.95, greedy evaluation) and
the small-model recipes; tests/test_grid.py checks that the committed files are what it writes.
"""

from __future__ import annotations

import fnmatch
import glob
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import metrics, tasks
from .config import RecipeError, RunConfig, load_recipe
from .runs import Run, best_iterate

RECIPE_SUFFIXES = (".yaml", ".yml")


class GridError(RecipeError):
    """The grid cannot start: the message lists every bad recipe (nothing has run)."""


@dataclass(frozen=True)
class GridRun:
    """One run of the grid: a recipe, or one paradigm of a study recipe."""

    recipe: Path
    name: str  # run name; the run directory is <runs_root>/<name>
    model: str  # M0: hub id or local path, "organism" for the arith organism
    task: str
    paradigm: str
    study: bool  # the recipe lists several paradigms
    run_dir: Path
    status: str  # new, partial (k/n stages), done, or conflict (the directory holds another config)

    @property
    def done(self) -> bool:
        return self.status == "done"


@dataclass
class GridResult:
    runs: list[GridRun]  # the selected runs, in order
    failures: list[tuple[str, str]] = field(default_factory=list)  # (recipe or run, error)
    written: list[Path] = field(default_factory=list)  # metrics.csv and pass1.md


def find_recipes(spec: str | Path, recipes_dir: Path | None = None) -> list[Path]:
    """Recipe files of `spec`: a directory (its *.yaml, not recursive), a glob pattern, one file, or the name
    of a folder of notebooks/params (`paper`, `small`)."""
    from .pipeline import RECIPES

    recipes_dir = RECIPES if recipes_dir is None else recipes_dir
    spec = str(spec)
    p = Path(spec)
    if not p.exists() and not glob.has_magic(spec) and (recipes_dir / spec).is_dir():
        p = recipes_dir / spec
    if p.is_dir():
        found = [x for x in p.iterdir() if x.suffix in RECIPE_SUFFIXES]
    elif p.is_file():
        found = [p]
    else:
        found = [Path(x) for x in glob.glob(spec, recursive=True) if Path(x).suffix in RECIPE_SUFFIXES]
    if not found:
        raise GridError(f"no recipe (*.yaml) matches {spec!r} (a directory, a glob pattern such as "
                        f"'notebooks/params/paper/*gsm8k*.yaml', a file, or a folder of {recipes_dir})")
    return sorted(found)


def _members(cfg: RunConfig) -> list[RunConfig]:
    return [cfg.member(p) for p in cfg.paradigms] if cfg.is_study else [cfg]


def run_status(run_dir: Path, cfg: RunConfig) -> str:
    """new, done, partial (k/n stages), or conflict, from the run's manifest (pipeline stage keys t/stage)."""
    from .pipeline import stages_of

    manifest = run_dir / "manifest.json"
    if not manifest.exists():
        return "new"
    data = json.loads(manifest.read_text())
    if data.get("config_hash") != cfg.digest():
        return "conflict"
    gold_sft = bool(cfg.model)  # a recipe with its own M0 trains M1 at t = 1
    keys = [f"{t}/{s}" for t in range(1, cfg.iterations + 1) for s in stages_of(t, gold_sft)]
    done = sum(data.get("stages", {}).get(k, {}).get("state") == "done" for k in keys)
    return "done" if done == len(keys) else f"partial ({done}/{len(keys)} stages)"


def plan(recipes: list[Path], runs_root: str | Path, overrides: list[str] | None = None,
         only: list[str] | None = None) -> list[GridRun]:
    """Validate every recipe, then list its runs with their status. Raises GridError listing every invalid
    recipe, every run directory two recipes share and every run directory that holds another config."""
    errors, runs, owner = [], [], {}
    for path in recipes:
        try:
            cfg = load_recipe(path, overrides)
        except (ValueError, FileNotFoundError) as e:  # RecipeError is a ValueError
            errors.append(str(e))
            continue
        model = cfg.model or "organism"
        for m in _members(cfg):
            run_dir = Path(runs_root) / m.name
            if run_dir in owner:
                errors.append(f"recipe {path}: run '{m.name}' is also made by recipe {owner[run_dir]} (both would "
                              f"write {run_dir}); give one of them another `name`")
                continue
            owner[run_dir] = path
            status = run_status(run_dir, m)
            if status == "conflict":
                errors.append(f"recipe {path}: {run_dir} holds a run made with another config; rename the recipe's "
                              f"`name`, or delete that directory (or run it alone with `selfimprove run --overwrite`)")
            runs.append(GridRun(path, m.name, model, m.task, m.paradigm, cfg.is_study, run_dir, status))
    if errors:
        raise GridError(f"{len(errors)} problem(s) in the grid's recipes; nothing was run:\n"
                        + "\n".join(f"  - {e}" for e in errors))
    if only:
        runs = [r for r in runs if any(fnmatch.fnmatch(r.name, pat) or fnmatch.fnmatch(r.recipe.stem, pat)
                                       for pat in only)]
        if not runs:
            raise GridError(f"--only {' '.join(only)} selects none of the grid's runs (patterns match a run name "
                            f"such as 'paper_mistral-7b_gsm8k/dpo' or a recipe file stem)")
    return runs


def plan_table(runs: list[GridRun]) -> str:
    """Markdown: one row per run with its recipe and status."""
    lines = ["| run | model | task | paradigm | recipe | status |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.model} | {r.task} | {r.paradigm} | {r.recipe} | {r.status} |" for r in runs]
    return "\n".join(lines)


def _groups(runs: list[GridRun]) -> list[tuple[Path, list[GridRun]]]:
    out: dict[Path, list[GridRun]] = {}
    for r in runs:
        out.setdefault(r.recipe, []).append(r)
    return list(out.items())


def collect(runs: list[GridRun]) -> pd.DataFrame:
    """Every run's tidy metrics table (`metrics.collect`) with recipe, run, model, task and paradigm columns in
    front; runs with no evaluated iteration yet are left out."""
    tables = []
    for r in runs:
        if not Run(r.run_dir).iterations("metrics.json"):
            continue
        t = metrics.collect(r.run_dir)
        for i, (col, value) in enumerate((("recipe", str(r.recipe)), ("run", r.name), ("model", r.model),
                                          ("task", r.task), ("paradigm", r.paradigm))):
            t.insert(i, col, value)
        tables.append(t)
    if not tables:
        return pd.DataFrame(columns=["recipe", "run", "model", "task", "paradigm", *metrics.TABLE_COLUMNS])
    return pd.concat(tables, ignore_index=True)


def pass1_table(table: pd.DataFrame) -> str:
    """Markdown pivot: greedy test pass@1 of M_1..M_T per run (with its model, task and paradigm), and the best
    iterate M_t* with its gain over M_1 (paper, Figure 1)."""
    sel = table[(table["split"] == "test") & (table["metric"] == "pass@1") & (table["subset"] == "all")]
    if sel.empty:
        return "no evaluated iteration yet"
    keys = ["run", "model", "task", "paradigm"]
    pivot = sel.pivot_table(index=keys, columns="iteration", values="value", aggfunc="first", sort=False)
    its = sorted(pivot.columns)
    lines = ["| " + " | ".join(keys) + " | " + " | ".join(f"M{t}" for t in its) + " | best (gain over M1) |",
             "|" + "---|" * (len(keys) + len(its) + 1)]
    for index, row in pivot.iterrows():
        cells = ["" if pd.isna(row[t]) else f"{row[t]:.3f}" for t in its]
        t = best_iterate(row.dropna().to_dict())  # M_t*, t >= 2: the rule of the verdict and Figure 1
        gain = f"M{t} {row[t]:.3f} ({row[t] - row[1]:+.3f})" if 1 in row and pd.notna(row[1]) and t is not None \
            else ""
        lines.append("| " + " | ".join(map(str, index)) + " | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(lines)


def write(table: pd.DataFrame, runs_root: str | Path) -> list[Path]:
    """<runs_root>/grid/metrics.csv (the tidy table of every run) and pass1.md (the pass@1 pivot)."""
    out = Path(runs_root) / "grid"
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / "metrics.csv", out / "pass1.md"
    table.to_csv(csv, index=False)
    md.write_text("Greedy test pass@1 per iteration (selfimprove grid)\n\n" + pass1_table(table) + "\n")
    return [csv, md]


def run(spec: str | Path, *, runs_root: str | Path = "data/runs", organism_root: str | Path = "data/organism",
        only: list[str] | None = None, overrides: list[str] | None = None, dry_run: bool = False,
        log=print) -> GridResult:
    """Validate every recipe of `spec`, run (or resume) the selected runs one after another, then collect
    their metrics. A failing recipe is recorded in `failures` and the grid goes on."""
    from . import pipeline

    overrides = list(overrides or [])
    runs = plan(find_recipes(spec), runs_root, overrides, only)
    result = GridResult(runs)
    log(f"grid: {len(runs)} run(s) from {len({r.recipe for r in runs})} recipe(s), "
        f"{sum(r.done for r in runs)} done\n" + plan_table(runs))
    if dry_run:
        return result
    for recipe, group in _groups(runs):
        todo = [r for r in group if not r.done]
        if not todo:
            log(f"\n== {recipe}: done, skipped")
            continue
        cfg = load_recipe(recipe, overrides)
        whole = len(group) == len(cfg.paradigms)
        for r in [None] if whole else todo:
            label = str(recipe) if r is None else r.name
            log(f"\n== {label}")
            try:
                if r is None:
                    pipeline.run(str(recipe), overrides=overrides, runs_root=runs_root, organism_root=organism_root,
                                 log=log)
                else:  # one run of a study; its siblings' finished stages are still shared
                    siblings = [Path(runs_root) / cfg.member(p).name for p in cfg.paradigms if p != r.paradigm]
                    pipeline.run_config(cfg.member(r.paradigm), runs_root=runs_root, organism_root=organism_root,
                                        log=log, siblings=siblings)
            except Exception as e:  # a failed run must not stop the grid; it is listed at the end
                result.failures.append((label, f"{type(e).__name__}: {e}"))
                log(f"   FAILED: {type(e).__name__}: {e}")
    result.runs = [GridRun(r.recipe, r.name, r.model, r.task, r.paradigm, r.study, r.run_dir,
                           run_status(r.run_dir, _member(r, overrides))) for r in runs]
    table = collect(result.runs)
    result.written = write(table, runs_root)
    log(f"\ngrid metrics: {result.written[0]} ({len(table)} rows); pass@1 table: {result.written[1]}\n\n"
        + pass1_table(table))
    if result.failures:
        log(f"\n{len(result.failures)} failure(s):\n" + "\n".join(f"  - {k}: {v}" for k, v in result.failures))
    return result


def _member(r: GridRun, overrides: list[str]) -> RunConfig:
    cfg = load_recipe(r.recipe, overrides)
    return cfg.member(r.paradigm) if cfg.is_study else cfg


# ---------------------------------------------------------------------------------------------------------
# Recipe generator: the paper's grid and the small-model recipes (`selfimprove recipes paper|small`).

PAPER_MODELS = {  # file key: (hub id, the paper's name). The paper's M0 is a base model (Algorithm 1); it
    # gives no hub ids, these are the base releases of each (our choice).
    "llama2-7b": ("meta-llama/Llama-2-7b-hf", "LLaMA2-7B"),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", "Mistral-7B"),
    "llama3-8b": ("meta-llama/Meta-Llama-3-8B", "LLaMA3-8B"),
}
SMALL_MODELS = {
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct"),
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5-1.5B-Instruct"),
}
# Per task: max new tokens (the paper does not give them). GSM8K and MATH: 1024 as DIVE sampled; CSQA and MBPP
# answers are short (a rationale and a letter; one function), so less (our choice).
PAPER_TASKS = ("csqa", "gsm8k", "math", "mbpp")  # the paper's four tasks, in the grid's order

_PAPER_HEADER = """\
# The paper's grid: {paper_name} on {task_name}, iterative SFT, DPO and SFT-DPO (paper, Figure 1: M x D x F).
# Generated by `selfimprove recipes paper` (selfimprove/grid.py): change the generator, not this file.
# Run: `selfimprove run {path}`; the whole grid: `selfimprove grid paper`.
# Its three runs go to data/runs/{name}/<paradigm>/ and share M1's stages.
#
# Memory, one 80 GB GPU (A100/H100 80GB), bf16: the weights of a 7-8B model take 14-16 GB (2 bytes a
# parameter); LoRA r = 16 on every linear layer trains about 40M parameters (0.6%), so their gradients and
# AdamW state need well under 1 GB; the DPO reference is the same weights with the adapter disabled (no second
# copy); activations of 4 pairs x {max_length} tokens with Unsloth's gradient checkpointing fit in the rest.
# vLLM sampling runs in a kernel of its own (kernel.needs_fresh_kernel; the other stages share one, which
# empties CUDA's cache after each), so the two never share the GPU. 4-bit (QLoRA,
# `--set train.load_in_4bit=true`) is for GPUs with less than about 40 GB; no paper recipe uses it. Past one
# GPU: README, 'Past one GPU'.
"""

_SMALL_HEADER = """\
# Small model: {paper_name} on {task_name}, the three paradigms, on one GPU in hours rather than days (our
# choice of scale; the paper used 7-8B models, notebooks/params/paper/). Instruct model: its chat template
# renders the prompts. Generated by `selfimprove recipes small` (selfimprove/grid.py).
# Run: `selfimprove run {path}`; all small recipes: `selfimprove grid small`.
# On a CPU (slowly): --set sample.backend=transformers --set train.backend=trl
"""

def _yaml(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(_yaml, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _lines(rows: list[tuple[str, object, str]], indent: str = "") -> list[str]:
    """`key: value  # comment` lines, the comments aligned."""
    out = []
    for key, value, note in rows:
        text = f"{indent}{key}: {_yaml(value)}"
        out.append(f"{text:<31} # {note}" if note else text)
    return out


def _recipe(kind: str, key: str, task: str) -> tuple[str, str]:
    """(file name, YAML text) of one generated recipe; every value carries its source or says "our choice"."""
    paper = kind == "paper"
    hub_id, paper_name = (PAPER_MODELS if paper else SMALL_MODELS)[key]
    file, name, max_new = f"{key}_{task}.yaml", f"{kind}_{key}_{task}", tasks.task_of(task).max_new_tokens
    ks = [1, 2, 4, 8, 16, 32, 64] if paper else [1, 2, 4, 8, 16]
    fmt = dict(paper_name=paper_name, task_name=tasks.task_of(task).title, path=f"notebooks/params/{kind}/{file}",
               name=name, max_length=max_new + 512)
    top = [
        ("name", name, ""),
        ("iterations", 5, "T = 5: M1 (gold SFT) + 4 self-improvement iterations (paper, Algorithm 1; Fig. 1)"),
        ("seed", 0, ""),
        ("task", task, ""),
        ("paradigm", ["sft", "dpo", "sft-dpo"], "paper, Figure 1; a study: one run per paradigm, M1 shared"),
        ("model", hub_id, "M0, a base checkpoint (paper, Algorithm 1)" if paper else "M0 (our choice of small model)"),
    ]
    sample = [
        ("backend", "vllm", ""),
        ("n_samples", 50 if paper else 16,
         "N per training problem " + ("(paper §4.1: N = 50)" if paper else "(our choice; paper: 50)")),
        ("n_eval_samples", ks[-1], f"per test/OOD problem, for pass@k up to {ks[-1]}"
         + (" (paper §5.1, Fig. 3: N = 2..64)" if paper else " (our choice)")),
        ("temperature", 0.75, "paper §4.1"),
        ("top_p", 0.95, "paper §4.1, as is greedy test pass@1"),
        ("max_new_tokens", max_new, "DIVE: 1024 (the paper does not give it)" if max_new == 1024 else
         "our choice: short answers (the paper does not give it)"),
        ("problems_per_iteration", 0 if paper else 2000, "0 = every training problem (Algorithm 1 samples all of D)"
         if paper else "our choice: a subset per iteration keeps a run to hours"),
        ("dtype", "bfloat16", "the checkpoints' own dtype"),
        ("max_model_len", 2048, "prompt + response budget of vLLM's KV cache (our choice)"),
        ("gpu_memory_utilization", 0.9, "vLLM's default share of GPU memory"),
        ("tensor_parallel_size", 1, "one GPU; > 1 shards the model (README, 'Past one GPU')"),
        ("data_parallel_size", 1, "one GPU; > 1 adds model replicas (README, 'Past one GPU')"),
    ]
    verify = [
        ("workers", 8, "grading processes (our choice, for a GPU machine of 16+ cores)"),
    ]
    train = [
        ("backend", "unsloth", "Unsloth FastLanguageModel + TRL (CUDA)"),
        ("precision", "bf16", ""),
        ("load_in_4bit", False, "bf16 fits (header); true = QLoRA, for smaller GPUs"),
        ("lora_r", 16, "LoRA, ours (paper: full-parameter per a secondary source; section not identified)"),
        ("lora_alpha", 32, "update scaled by alpha / r = 2 (our choice)"),
        ("lora_dropout", 0.0, "Unsloth's fast path wants 0"),
        ("gold_epochs", 3.0, "M0 -> M1 gold SFT (DIVE SFT: 3 epochs)"),
        ("sft_learning_rate", "1.0e-4" if paper else "2.0e-4",
         "LoRA SFT (our choice: QLoRA used 2e-4 at 7B; the paper gives none)"),
        ("learning_rate", "5.0e-6" if paper else "1.0e-5", "LoRA DPO (our choice: " + (
            "10x the usual full-parameter 5e-7)" if paper else "twice the 7B recipes' rate for a small model)")),
        ("epochs", 1.0, "per iteration (DIVE: 1)"),
        ("batch_size", 4 if paper else 8, "pairs (DPO) or rows (SFT) per device step (our choice)"),
        ("grad_accum", 16 if paper else 8, "effective batch 64 (DIVE: 64)"),
        ("beta", 0.1, "DPO beta (TRL default; DIVE: 0.4 at lr 3e-8)"),
        ("loss_type", ["sigmoid", "sft"], "DPO + NLL on the chosen response, as DIVE"),
        ("loss_weights", [1.0, 0.5], "NLL weight 0.5 (DIVE: LLaMA-Factory dpo_ftx 0.5)"),
        ("max_length", max_new + 512, "prompt + response tokens (our choice: max_new_tokens + 512)"),
        ("ref_model", "previous", "DPO reference M(t-1) (DIVE; the paper does not give it)"),
        ("max_pairs_per_problem", 5, "DPO pairs per problem (DIVE paper: P = 5)"),
        ("data_mode", "fresh", "D_t of this iteration only (paper, Algorithm 1)"),
        ("merge_adapter", True, "M_t = F_t(M(t-1)): the adapter merged each iteration"),
        ("num_processes", 1, "one GPU; > 1 = accelerate launch (README, 'Past one GPU')"),
    ]
    evaluate = [
        ("ks", ks, "pass@k; accuracy@N of paper §5.1, Fig. 3" if paper else "pass@k (our choice)"),
        ("diversity_per_problem", 50 if paper else 16, "N = 50 responses per diversity set (paper §5.2)"
         if paper else "every response of a problem (our choice)"),
    ]
    lines = [(_PAPER_HEADER if paper else _SMALL_HEADER).format(**fmt).rstrip("\n"), *_lines(top),
             "# data: the task's default dataset and splits; local files: `data: {train: ..., test: ...}`"]
    for section, rows in (("sample", sample), ("verify", verify), ("train", train), ("evaluate", evaluate)):
        lines += ["", f"{section}:", *_lines(rows, "  ")]
    return file, "\n".join(lines) + "\n"


def paper_recipes() -> dict[str, str]:
    """{file name: YAML text} of the paper's grid: one recipe per (model, task), each a study of the three
    paradigms (12 files, 36 runs)."""
    return dict(_recipe("paper", m, t) for m in PAPER_MODELS for t in PAPER_TASKS)


def small_recipes() -> dict[str, str]:
    """{file name: YAML text} of the small-model recipes: Qwen2.5 0.5B and 1.5B Instruct on GSM8K and MATH."""
    return dict(_recipe("small", m, t) for m in SMALL_MODELS for t in ("gsm8k", "math"))


RECIPE_SETS = {"paper": paper_recipes, "small": small_recipes}


def write_recipes(kind: str, out_dir: str | Path | None = None, check: bool = False) -> list[Path]:
    """Write the `kind` recipes (paper or small) into `out_dir` (default notebooks/params/<kind>/). With
    `check`, write nothing and return the files that are missing or differ from what the generator makes."""
    from .pipeline import RECIPES

    out = Path(out_dir) if out_dir else RECIPES / kind
    texts = RECIPE_SETS[kind]()
    if check:
        return [out / f for f, text in texts.items() if not (out / f).exists() or (out / f).read_text() != text]
    out.mkdir(parents=True, exist_ok=True)
    for f, text in texts.items():
        (out / f).write_text(text)
    return [out / f for f in texts]
