"""The run: every stage notebook of every iteration, in one kernel reset between stages, resumable at any point.

`selfimprove run <recipe>` validates the whole recipe, prepares the run directory (problems, the organism's
M1 as iter_1/model), then for t = 1..T executes the stage notebooks with papermill (README, "What a run is"):

    t = 1:      20_sample, 30_verify, 40_evaluate              (M1 is the organism's gold-SFT model; a recipe
                                                                with its own `model` runs 10_train first: M0 -> M1)
    t = 2..T:   10_train, 20_sample, 30_verify, 40_evaluate

A recipe whose `paradigm` is a list is a study: one run per paradigm in <runs_root>/<name>/<paradigm>/, run
one after another. A stage whose inputs and settings are the same in a sibling run (stagecache.inputs_key: M1's
sampling, grading and evaluation are the same for every arm, and SFT-DPO's M2 is DPO's M2) is taken from it as
hard links and marked `shared_from` in the manifest, rather than computed again.

The stages run in one Jupyter kernel per run or study, emptied after each stage (kernel.py;
`kernel="fresh"` starts one per stage). Executed copies land in iter_<t>/notebooks/ (the run's log). The
manifest records each stage as running, then done with its duration, inputs key and output hashes; a rerun
skips a done stage while what it reads and what it wrote are as recorded (stagecache), and redoes an
interrupted one, or one whose inputs or outputs changed, from its start, saying why. Every stage is
deterministic for the run's seed, so a killed and resumed run ends with the same metrics as one that never
stopped. A finished run (and study) ends with its report: tables, verdict and figures (report.py). This module
is the loop; the pieces it puts together (the stage notebooks, preparing a run, executing a stage, taking one
over from a sibling) are in stages.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from . import artifacts, deep, lanes, organism, report, stagecache
from .config import RecipeError, RunConfig, load_recipe, resolve_recipe
from .kernel import INTERRUPT, KERNEL_POLICIES, Interrupted
from .stages import (  # noqa: F401  (NOTEBOOKS, RECIPES, STAGE_NOTEBOOKS, ...: importable from here as before)
    NOTEBOOKS,
    PACKAGE_ROOT,
    RECIPES,
    STAGE_NOTEBOOKS,
    StageError,
    check_machine,
    kernel_session,
    last_progress,
    prepare,
    run_stage,
    stages_of,
    sync_parameter_cells,
)


def run(recipe: str, *, overrides: list[str] | None = None, runs_root: str | Path = "data/runs",
        organism_root: str | Path = "data/organism", overwrite: bool = False, log_output: bool = False,
        stop_after: str | None = None, figures_dir: str | Path | None = None, kernel: str = "shared",
        seeds: list[int] | None = None, jobs: int = 1, log=print) -> Path:
    """Run (or resume) a recipe; returns the run directory, or for a study (a list of paradigms) the study
    directory holding one run per paradigm. `stop_after` ("<t>/<stage>") ends early (each run of a study).
    `kernel`: "shared" runs the stages in one kernel, reset after each (kernel.py), "fresh" each in its own.
    `seeds`: run the recipe once per seed (run_seeds) into <name>-seeds/seed<s>/; returns that folder.
    `jobs`: a study's runs at once, each in a process of its own (lanes.py), after the first run's iteration 1
    (M1's stages, which every run shares)."""
    if kernel not in KERNEL_POLICIES:  # before any folder is made or locked (issue 20)
        raise RecipeError(f"kernel must be one of {', '.join(KERNEL_POLICIES)}; got {kernel!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise RecipeError(f"jobs must be an integer >= 1; got {jobs!r}")
    if seeds is not None:
        return run_seeds(recipe, seeds, overrides=overrides, runs_root=runs_root, organism_root=organism_root,
                         overwrite=overwrite, log_output=log_output, stop_after=stop_after, figures_dir=figures_dir,
                         kernel=kernel, jobs=jobs, log=log)
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
    artifacts.check_run_dir(study, Path(runs_root), study=True)  # before the study's kernel starts (issue 20)
    if not cfg.model:
        organism.check_root(cfg.organism_config(), Path(organism_root))
    for root in roots:
        artifacts.check_run_dir(root, Path(runs_root))
    members = {p: dict(cfg=cfg.member(p), runs_root=runs_root, organism_root=organism_root, overwrite=overwrite,
                       log_output=log_output, stop_after=stop_after, figures_dir=None,
                       siblings=[r for r in roots if r != root], report_run=stop_after is None, kernel=kernel)
               for p, root in zip(cfg.paradigms, roots)}
    m1_done = f"1/{stages_of(1, bool(cfg.model))[-1]}"  # every run's iteration 1 is the same: computed once
    if jobs > 1 and len(members) > 1 and not (stop_after or "").startswith("1/"):
        run_config(**{**next(iter(members.values())), "stop_after": m1_done, "report_run": False}, log=log)
        lanes.run_side_by_side(run_config, sharers_last(cfg, members), jobs)
    else:
        with kernel_session(kernel, study / "kernel.stderr.log") as session:  # one kernel for the whole study
            for member in members.values():
                run_config(**member, log=log, session=session)
    if stop_after is None:
        report.report_study(study, roots, figures_dir=figures_dir, log=log)
    return study


def sharers_last(cfg: RunConfig, members: dict[str, dict]) -> dict[str, dict]:
    """The members in the recipe's order, except that a run whose M2 is trained as an earlier run's is (SFT-DPO's
    is DPO's: stagecache.settings) comes after all the others: run side by side, it would wait for that M2."""
    if cfg.iterations < 2:
        return members
    seen, first, later = set(), {}, {}
    for p, member in members.items():
        key = json.dumps(stagecache.settings("train", 2, member["cfg"].stage("train", 2, "")), sort_keys=True,
                         default=str)
        (later if key in seen else first)[p] = member
        seen.add(key)
    return {**first, **later}


def seed_overrides(name: str, seed: int) -> list[str]:
    """The overrides that make a recipe's seed-`seed` member: its run seed (sampling, pair drawing, training
    order) and its organism seed (M1's initialisation and batch order; the arith problems stay the same), so
    that the spread across seeds includes M1's own (our choice: a new M1 per seed, as the paper's M1 would be a
    new SFT). Named <name>-seeds/seed<s>."""
    return [f"seed={seed}", f"organism.seed={seed}", f"name={name}-seeds/seed{seed}"]


def run_seeds(recipe: str, seeds: list[int], *, overrides: list[str] | None = None,
              runs_root: str | Path = "data/runs", figures_dir: str | Path | None = None, stop_after=None,
              log=print, **kwargs) -> Path:
    """The recipe once per seed (`selfimprove run demo --seeds 0,1,2`): every seed's config is validated before
    the first runs; then <name>-seeds/report/ gets the per-seed verdicts and the across-seed mean and spread
    of every number of the tidy metrics tables (report.report_seeds)."""
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise RecipeError(f"--seeds needs distinct seeds >= 0, got {seeds}")
    if figures_dir is not None:  # one folder cannot hold every seed's figures; they stay in each seed's report/
        raise RecipeError("--figures-dir does not go with --seeds: each seed's figures are in its own report/ "
                          "folder, the numbers across seeds in <name>-seeds/report/")
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
    model, folder = cfg.model, Path(cfg.model).expanduser()
    looks_local = model.startswith(("/", "./", "../", "~")) or model.count("/") > 1  # a hub id is [org/]name
    if model and looks_local and not folder.is_dir():
        raise RecipeError(f"recipe '{cfg.name}': model {model!r} is not a folder (a local model is a folder that "
                          "save_pretrained wrote; a hub id looks like 'org/name')")
    check_machine(cfg)
    if not cfg.model:  # before the run folder is made (issue 20: a read-only root failed after a kernel started)
        organism.check_root(cfg.organism_config(), Path(organism_root))
    # Absolute: the run directory and model folder are written into the executed notebooks (the run's
    # log), and must not depend on the working directory of whoever opens them.
    paths = artifacts.RunPaths((Path(runs_root) / cfg.name).absolute())
    artifacts.check_run_dir(paths.root, Path(runs_root))  # before anything is written there (issue 20)
    with artifacts.run_lock(paths.root), \
            kernel_session(kernel, Path(runs_root) / cfg.name / "kernel.stderr.log", session) as session:
        local_model = str(folder.absolute()) if model and folder.is_dir() else ""
        manifest = artifacts.Manifest.open(paths, cfg.recipe(), cfg.digest(), overwrite=overwrite)
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
                inputs = stagecache.inputs_key(manifest.data["stages"], stage, t, stage_cfg)
                if key == "2/train":
                    report.log_paradigm_advice(paths, cfg.paradigm, log)
                run_stage(key, stage_cfg, paths, manifest, inputs, run_name=cfg.name, siblings=siblings,
                          session=session, log_output=log_output, log=log)
                if key == stop_after:
                    return paths.root
        deep.run(cfg, paths, manifest, list(siblings), log)  # M1, M_t* and M_T sampled deeply (deep.py)
        if report_run:  # a study's runs leave the paper's figures to the study report
            report.report_run(paths.root, figures_dir=figures_dir, log=log, all_figures=not siblings)
        return paths.root

