"""`selfimprove` command line: data, organism, run, report, figures, grid, recipes, metrics, grade, audit.

    selfimprove data arith [--out data/problems/arith] [--seed 0]   write the arith splits as JSONL
    selfimprove data gsm8k [--train F --test F --ood F] [--set levels=[1,5]]  a real task's splits (tasks.py)
    selfimprove organism [demo]                                    build (or reuse) a recipe's organism
    selfimprove run demo [--set sample.n_samples=16] [--overwrite]  run or resume a recipe
    selfimprove report data/runs/demo                              summary tables and figures of a run or study
    selfimprove figures data/runs/demo [more runs or studies] --out figures   the paper's figures, PNG and PDF
    selfimprove grid paper [--dry-run] [--only 'paper_mistral*']   run many recipes, resume; one metrics table
    selfimprove recipes paper [--check]                           write the generated recipes (paper, small)
    selfimprove metrics data/runs/demo [--set bootstrap=2000]       recompute every metric; tidy table, verdict
    selfimprove grade --task math --input in.jsonl --output out.jsonl  grade responses (hard limit per line)
    selfimprove audit --task math --data math.jsonl [--run data/runs/demo]  golds against themselves; run rates
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _data(args) -> int:
    from . import arith, tasks
    from .config import build

    out = Path(args.out or f"data/problems/{args.task}")
    given = {k: v for k in ("source", "train", "test", "ood") if (v := getattr(args, k))}
    if args.task == "arith":
        if given or args.set:
            print("error: --source, --train, --test, --ood and --set are for the real tasks", file=sys.stderr)
            return 2
        cfg = arith.ArithConfig(seed=args.seed)
        written = arith.write_jsonl(arith.generate(cfg), out, cfg)
    else:
        cfg = build(tasks.DataConfig, {**_key_values(args.set, "--set"), **given}, "selfimprove data")
        written = tasks.write_problems(args.task, cfg, out)
    for p in written:
        print(p)
    return 0


def _organism(args) -> int:
    from . import organism, pipeline
    from .config import load_recipe, resolve_recipe

    cfg = load_recipe(resolve_recipe(args.recipe, pipeline.RECIPES), args.set).organism_config()
    path = organism.ensure(cfg, Path(args.organism_root), rebuild=args.rebuild)
    print(f"organism: {path / 'M0'} and {path / 'M1'}")
    if args.ship:
        print(f"organism: shipped as {organism.ship(cfg, Path(args.organism_root))} (commit it)")
    return 0


def _run(args) -> int:
    from . import pipeline

    pipeline.run(args.recipe, overrides=args.set, runs_root=args.runs_root, organism_root=args.organism_root,
                 overwrite=args.overwrite, log_output=args.verbose, stop_after=args.stop_after,
                 figures_dir=args.figures_dir, kernel=args.kernel, seeds=args.seeds, jobs=args.jobs)
    return 0


def _report(args) -> int:
    from . import report
    from .runs import Run, Study

    runs = Study(args.run_dir).run_dirs()
    if runs:  # a study: every run's report (each with its own verdict thresholds), then the paradigms side by side
        for root in runs:  # every run checked before any report is written
            Run(root).check_evaluated()
        for root in runs:
            report.report_run(root, all_figures=False)
        report.report_study(Path(args.run_dir), runs, figures_dir=args.figures_dir)
        return 0
    report.report_run(args.run_dir, figures_dir=args.figures_dir)
    return 0


def _figures(args) -> int:
    from . import plots

    try:
        table = plots.runs_table(args.runs)
    except plots.PlotsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, written in plots.render_all(table, args.out).items():
        print(f"{name}: " + ", ".join(str(p) for p in written))
    return 0


def _grid(args) -> int:
    from . import grid

    result = grid.run(args.recipes, runs_root=args.runs_root, organism_root=args.organism_root, only=args.only,
                      overrides=args.set, dry_run=args.dry_run)
    return 1 if result.failures else 0


def _recipes(args) -> int:
    from . import grid

    written = grid.write_recipes(args.kind, args.out, check=args.check)
    if args.check:
        for f in written:
            print(f"out of date: {f} (run `selfimprove recipes {args.kind}`)", file=sys.stderr)
        return 1 if written else 0
    print("\n".join(str(f) for f in written))
    return 0


def _key_values(items: list[str], what: str) -> dict:
    from .config import RecipeError, parse_value

    out = {}
    for item in items:
        if "=" not in item:
            raise RecipeError(f"{what} {item!r}: expected NAME=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value, item, what)
    return out


def _metrics(args) -> int:
    from . import metrics, report, verdict
    from .diversity import EmbeddingError
    from .runs import Run

    # The run's own thresholds (its recipe's `verdict` section), with --threshold over them for this command only.
    thresholds = Run(args.run_dir).thresholds(_key_values(args.threshold, "--threshold"))
    try:
        written = metrics.recompute(args.run_dir, _key_values(args.set, "--set"))
    except (metrics.MetricsError, EmbeddingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"tidy table: {written[-2]} (and {written[-1].name})")
    print("\n" + report.summary_table(Path(args.run_dir)))
    v = verdict.for_run(args.run_dir, thresholds)
    if v is None:
        print("\nno verdict: it needs M1 and at least one later iterate")
    else:
        verdict.write(v, args.run_dir, thresholds)
        print("\n" + verdict.to_markdown(v))
    return 0


def _grade(args) -> int:
    from .grading.files import grade_jsonl

    counts, problems = grade_jsonl(args.task, args.input, args.output, timeout_s=args.timeout_s,
                                   workers=args.workers, memory_mb=args.memory_mb, unsafe=args.unsafe)
    for msg in problems:
        print(f"error: {msg}", file=sys.stderr)
    print(f"{sum(counts.values())} lines graded into {args.output}: " +
          ", ".join(f"{s} {counts[s]}" for s in sorted(counts)))
    if problems:
        print(f"{len(problems)} malformed line(s) left out (listed above)", file=sys.stderr)
    return 1 if problems else 0


def _audit(args) -> int:
    from .grading import audit
    from .runs import RERUN, RESUME

    if not args.data and not args.run:
        print("error: give --data FILE (a dataset to audit) and/or --run RUN_DIR (a run's grading rates)",
              file=sys.stderr)
        return 2
    failed = 0
    if args.data:
        table = audit.audit_rows(args.task, audit.read_rows(args.data), timeout_s=args.timeout_s,
                                 workers=args.workers)
        bad = table[table["status"] != "correct"]
        print(f"audit {args.task} {args.data}: {len(table)} checks, {len(table) - len(bad)} correct, "
              f"{len(bad)} failed")
        if len(bad):
            print(bad.to_string(index=False, max_colwidth=60))
        failed = len(bad)
    if args.run:
        rates, gaps = audit.run_audit(args.run)
        print(f"grading of run {args.run} (share of responses):")
        print(rates.to_string(index=False))
        for gap in gaps:  # a table left out is named, never skipped in silence (issue 20)
            print(f"{'error' if gap.expected else 'note'}: {gap.problem}; left out of the rates above; "
                  f"{RERUN if gap.expected else RESUME}", file=sys.stderr)
        failed += sum(gap.expected for gap in gaps)
    return 1 if failed else 0


def _seed_list(text: str) -> list[int]:
    """--seeds 0,1,2: distinct integers >= 0."""
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct integers >= 0, got {text!r}")
    return seeds


def _bounded(kind, low, strict: bool = False):
    """An argparse type: a `kind` number at least `low` (above it when `strict`), as grading/pool.py's
    grade_batch requires; checked while parsing, before any file is read."""
    def parse(text: str):
        value = kind(text)
        if not math.isfinite(value):  # nan passes every comparison: `--timeout-s nan` was no limit (issue 20)
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'" for text that is not a number
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfimprove", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data", help="write a task's problems as JSONL")
    from .config import TASKS

    p.add_argument("task", choices=TASKS)
    p.add_argument("--out", default=None, help="output folder (default data/problems/<task>)")
    for split in ("source", "train", "test", "ood"):
        p.add_argument(f"--{split}", default="", help="real tasks: hub id or local copy of the dataset" if
                       split == "source" else f"real tasks: {split} problems, a local JSON/JSONL/Parquet file "
                       "(the dataset's own fields) or a split of the source")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="real tasks: any tasks.DataConfig field, e.g. subjects=[algebra] (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_data)
    for name, fn, helptext in (("organism", _organism, "build or reuse the model organism of a recipe"),
                               ("run", _run, "run or resume a recipe")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("recipe", nargs="?" if name == "organism" else None, default="demo",
                       help="recipe name in notebooks/params/ or a path to a YAML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value, e.g. sample.n_samples=16 (repeatable)")
        p.add_argument("--organism-root", default="data/organism")
        p.set_defaults(fn=fn)
    org_p = sub.choices["organism"]
    org_p.add_argument("--rebuild", action="store_true",
                       help="train it anew even when data/organism or the package (a shipped build) holds it")
    org_p.add_argument("--ship", action="store_true",
                       help="copy the build into selfimprove/organisms/ (maintainers: makes it the shipped build)")
    run_p = sub.choices["run"]
    run_p.add_argument("--runs-root", default="data/runs")
    run_p.add_argument("--overwrite", action="store_true", help="delete a run made with another config")
    run_p.add_argument("--verbose", action="store_true", help="stream the notebooks' output")
    run_p.add_argument("--seeds", type=_seed_list, default=None, metavar="S,S,...",
                       help="run the recipe once per seed (run and organism seed) into <name>-seeds/seed<s>/, then "
                            "the per-seed verdicts and the across-seed mean and spread in <name>-seeds/report/")
    run_p.add_argument("--stop-after", default=None, metavar="T/STAGE", help="stop after this stage, e.g. 2/train")
    run_p.add_argument("--jobs", type=_bounded(int, 1), default=1, metavar="N",
                       help="a study's runs N at once after M1's stages, each in its own process with the cores "
                            "shared out (selfimprove/lanes.py; default 1: one after another)")
    run_p.add_argument("--kernel", choices=("shared", "fresh"), default="shared",
                       help="shared: the stages run in one kernel, reset after each (default); fresh: each stage "
                            "in a kernel of its own (selfimprove/kernel.py)")
    p = sub.add_parser("report", help="summary table and figure of a run")
    p.add_argument("run_dir")
    p.set_defaults(fn=_report)
    for q in (run_p, p):
        q.add_argument("--figures-dir", default=None, metavar="DIR",
                       help="also write the run's figures here (make demo: figures/); they always go to <run>/report/")
    p = sub.add_parser("figures", help="the paper's figures and the reversal dashboard of runs, PNG and PDF")
    p.add_argument("runs", nargs="+", help="run directories and/or study directories (one run per paradigm)")
    p.add_argument("--out", default="figures", help="folder for <figure>.png and <figure>.pdf")
    p.set_defaults(fn=_figures)
    p = sub.add_parser("grid", help="validate many recipes, run or resume them one after another, and collect "
                                    "their metrics into one table (<runs-root>/grid/)")
    p.add_argument("recipes", help="a folder of recipes (or its name in notebooks/params: paper, small), a glob "
                                   "pattern or a file")
    p.add_argument("--dry-run", action="store_true", help="print the plan (recipes, runs, which are done) only")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="run only runs whose name or recipe file stem matches this glob, e.g. '*/dpo' (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in every recipe, e.g. sample.n_samples=16 (repeatable)")
    p.add_argument("--runs-root", default="data/runs")
    p.add_argument("--organism-root", default="data/organism")
    p.set_defaults(fn=_grid)
    p = sub.add_parser("recipes", help="write the generated recipes: paper (notebooks/params/paper/) or small")
    p.add_argument("kind", choices=["paper", "small"])
    p.add_argument("--out", default=None, help="folder (default notebooks/params/<kind>/)")
    p.add_argument("--check", action="store_true", help="write nothing; fail if a committed file differs")
    p.set_defaults(fn=_recipes)
    p = sub.add_parser("metrics", help="recompute every iteration's metrics from its sample tables; tidy "
                                       "table and verdict")
    p.add_argument("run_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an evaluate setting, e.g. diversity_per_problem=8 (repeatable)")
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                   help="override a verdict threshold (selfimprove.verdict.Thresholds), e.g. ood_drop=0.02, for "
                        "this command only: the verdict it writes uses the run's own thresholds (its recipe's "
                        "`verdict` section, recorded in manifest.json) with these over them; `selfimprove report` "
                        "and later runs go back to the run's own (repeatable)")
    p.set_defaults(fn=_metrics)
    from .grading import GRADERS

    for name, fn, helptext in (("grade", _grade, "grade a JSONL file of responses"),
                               ("audit", _audit, "grade gold answers against themselves; a run's grading rates")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--task", required=True, choices=sorted(GRADERS))
        p.add_argument("--timeout-s", type=_bounded(float, 0, strict=True), default=10.0,
                       help="hard wall-clock limit per item")
        p.add_argument("--workers", type=_bounded(int, 1), default=2, help="grading processes")
        p.set_defaults(fn=fn)
    p = sub.choices["grade"]
    p.add_argument("--input", required=True, help="JSONL: response and gold (MBPP: tests, setup) per line")
    p.add_argument("--output", required=True, help="JSONL: each input line plus status, extracted, detail")
    p.add_argument("--memory-mb", type=_bounded(int, 256), default=2048,
                   help="address-space limit of each grading process")
    p.add_argument("--unsafe", action="store_true", help="MBPP without bubblewrap: the process-level sandbox only")
    p = sub.choices["audit"]
    p.add_argument("--data", help="dataset JSONL in its Hugging Face format (arith: the package's problems)")
    p.add_argument("--run", help="a run directory: rates of timeout, no_answer and error per iteration")
    args = parser.parse_args(argv)
    from .artifacts import ManifestError, RunDirError
    from .config import RecipeError
    from .data import DataError
    from .grading.audit import AuditDataError
    from .grading.files import GradeFileError
    from .kernel import stop_kernels_on_interrupt
    from .metrics import MetricsError
    from .pipeline import StageError
    from .tasks import TaskDataError

    try:
        with stop_kernels_on_interrupt():
            return args.fn(args)
    except KeyboardInterrupt as e:  # one line, not a traceback (kernel.stop_kernels_on_interrupt)
        what = getattr(e, "what", "")
        print(f"\ninterrupted: {what} stopped; finished stages are kept. Run the same command again to resume (the "
              "interrupted stage is redone from its start)." if what else "\ninterrupted.", file=sys.stderr)
        return 130
    except (RecipeError, DataError, StageError, AuditDataError, TaskDataError, ManifestError, MetricsError,
            RunDirError, GradeFileError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
