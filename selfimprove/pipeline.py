"""The run: every stage notebook of every iteration, each in a fresh kernel, resumable at any point.

`selfimprove run <recipe>` validates the whole recipe, prepares the run directory (problems, the organism's
M1 as iter_1/model), then for t = 1..T executes the stage notebooks with papermill (DESIGN.md):

    t = 1:      20_sample, 30_verify, 40_evaluate              (M1 is the gold-SFT model)
    t = 2..T:   10_train, 20_sample, 30_verify, 40_evaluate

Executed copies land in iter_<t>/notebooks/ (the run's log). The manifest records each stage as running,
then done with its duration and output hashes; a rerun skips done stages and redoes an interrupted one from
its start. Every stage is deterministic for the run's seed, so a killed and resumed run ends with the same
metrics as one that never stopped.
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

from . import arith, artifacts, metrics, organism, verdict
from .config import RunConfig, load_recipe, resolve_recipe

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = PACKAGE_ROOT / "notebooks"
RECIPES = NOTEBOOKS / "params"
STAGE_NOTEBOOKS = {"train": "10_train.ipynb", "sample": "20_sample.ipynb", "verify": "30_verify.ipynb",
                   "evaluate": "40_evaluate.ipynb"}


class StageError(RuntimeError):
    """A stage notebook failed; the message names the stage, the error and where its log is."""


def stages_of(t: int) -> list[str]:
    return (["train"] if t >= 2 else []) + ["sample", "verify", "evaluate"]


def stage_outputs(paths: artifacts.RunPaths, stage: str, t: int, cfg) -> list[Path]:
    """The files a finished stage leaves; a stage counts as done only while they all exist."""
    if stage == "train":
        return [paths.model(t), paths.train_log(t)]
    if stage == "sample":
        return [paths.samples(t, s) for s in cfg.splits]
    if stage == "verify":
        return [paths.train_data(t)] if t < cfg.iterations else [paths.samples(t, "test")]
    return [paths.metrics(t), paths.per_problem(t)]


def prepare(cfg: RunConfig, paths: artifacts.RunPaths, manifest: artifacts.Manifest, organism_root: Path,
            log=print) -> None:
    """Problems and M1 for the run (the `prepare` stage): built once, then recorded and skipped."""
    key = "prepare"
    outputs = [paths.problems(s) for s in ("train", "test", "ood")] + [paths.model(1)]
    if manifest.is_done(key, outputs):
        return
    manifest.start(key)
    t0 = time.time()
    org_cfg = cfg.organism_config()
    org_dir = organism.ensure(org_cfg, organism_root, log=log)
    arith.write_jsonl(arith.generate(org_cfg.arith), paths.root / "problems", org_cfg.arith)
    tmp = paths.model(1).with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(org_dir / "M1", tmp)
    artifacts.replace_dir(tmp, paths.model(1))
    manifest.data["organism"] = json.loads((org_dir / "build.json").read_text())
    manifest.finish(key, outputs, time.time() - t0, paths.root)


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send file descriptor 2 (ours and the kernel's, which inherits it) to `path` for the block: the
    kernel's start-up chatter stays out of the terminal and its crash output stays with the run."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as fh:
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def execute_stage(stage: str, stage_cfg, out_nb: Path, log_output: bool) -> None:
    """Execute one stage notebook with papermill in a fresh kernel; its stderr goes to <notebook>.stderr.log."""
    import papermill as pm

    out_nb.parent.mkdir(parents=True, exist_ok=True)
    with _stderr_to(out_nb.with_suffix(".stderr.log")):
        pm.execute_notebook(str(NOTEBOOKS / STAGE_NOTEBOOKS[stage]), str(out_nb), parameters=asdict(stage_cfg),
                            cwd=str(PACKAGE_ROOT), progress_bar=False, log_output=log_output,
                            kernel_name="python3")


def run(recipe: str, *, overrides: list[str] | None = None, runs_root: str | Path = "data/runs",
        organism_root: str | Path = "data/organism", overwrite: bool = False, log_output: bool = False,
        stop_after: str | None = None, figures_dir: str | Path | None = None, log=print) -> Path:
    """Run (or resume) a recipe; returns the run directory. `stop_after` ("<t>/<stage>") ends early."""
    cfg = load_recipe(resolve_recipe(recipe, RECIPES), overrides)
    paths = artifacts.RunPaths(Path(runs_root) / cfg.name)
    manifest = artifacts.Manifest.open(paths, asdict(cfg), cfg.digest(), overwrite=overwrite)
    log(f"run {cfg.name}: {paths.root}  (T={cfg.iterations}, paradigm={cfg.paradigm}, config {cfg.digest()})")
    prepare(cfg, paths, manifest, Path(organism_root), log=log)
    for t in range(1, cfg.iterations + 1):
        for stage in stages_of(t):
            stage_cfg = cfg.stage(stage, t, paths.root)
            key = f"{t}/{stage}"
            if key == "2/train":
                log_paradigm_advice(paths, cfg.paradigm, log)
            if manifest.is_done(key, stage_outputs(paths, stage, t, stage_cfg)):
                log(f"  [{key}] done, skipped")
            else:
                log(f"  [{key}] running {STAGE_NOTEBOOKS[stage]}")
                stale = artifacts.clean_stale(paths.iter_dir(t)) if paths.iter_dir(t).exists() else []
                if stale:
                    log(f"  [{key}] removed {len(stale)} temporary file(s) an interrupted stage left")
                manifest.start(key)
                t0 = time.time()
                out_nb = paths.notebooks(t) / STAGE_NOTEBOOKS[stage]
                try:
                    execute_stage(stage, stage_cfg, out_nb, log_output)
                except Exception as e:
                    reason = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
                    manifest.fail(key, reason)
                    raise StageError(f"stage {key} failed: {reason}\n  executed notebook: {out_nb}\n"
                                     f"  kernel stderr: {out_nb.with_suffix('.stderr.log')}\n"
                                     "  Finished stages are kept; fix the cause and run the same command again.") from e
                manifest.finish(key, stage_outputs(paths, stage, t, stage_cfg), time.time() - t0, paths.root)
                log(f"  [{key}] done in {time.time() - t0:.1f}s")
            if key == stop_after:
                return paths.root
    report(paths, manifest, figures_dir=figures_dir, log=log)
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
           thresholds: verdict.Thresholds | None = None) -> None:
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
    for dest in [paths.report] + ([Path(figures_dir)] if figures_dir else []):
        dest.mkdir(parents=True, exist_ok=True)
        fig.savefig(dest / "pass1_by_iteration.png", dpi=150, bbox_inches="tight")
        log(f"figure: {dest / 'pass1_by_iteration.png'}")


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
        rows.append([f"M{m['iteration']}", f"{test.get('pass@1', float('nan')):.3f}",
                     *[f"{levels[k]:.2f}" for k in sorted(levels, key=int)],
                     *[f"{ks[k]:.3f}" for k in sorted(ks, key=int)],
                     f"{ood.get('pass@1', float('nan')):.3f}",
                     f"{m['train']['coverage_mean']:.3f}" if "train" in m else "",
                     f"{train['rewards/margins']['last']:.2f}" if "rewards/margins" in train else "",
                     f"{train['logps/chosen']['last']:.1f}" if "logps/chosen" in train else ""])
    first = all_metrics[0]["test"]
    header = ["model", "test pass@1", *[f"L{k}" for k in sorted(first.get("pass@1_by_level", {}), key=int)],
              *[f"pass@{k} (sampled)" for k in sorted(first.get("pass@k", {}), key=int)], "OOD pass@1",
              "train coverage", "DPO margin", "logp chosen"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def timing_table(manifest: artifacts.Manifest) -> str:
    st = manifest.data["stages"]
    lines = ["| stage | seconds | attempts |", "|---|---|---|"]
    lines += [f"| {k} | {v.get('seconds', '')} | {v.get('attempts', '')} |" for k, v in st.items()]
    total = sum(v.get("seconds", 0) for v in st.values())
    lines.append(f"| total | {total:.1f} | |")
    return "\n".join(lines)
