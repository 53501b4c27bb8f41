"""`selfimprove` command line: data, organism, run, report.

    selfimprove data arith [--out data/problems/arith] [--seed 0]   write the arith splits as JSONL
    selfimprove organism [demo]                                    build (or reuse) a recipe's organism
    selfimprove run demo [--set sample.n_samples=16] [--overwrite]  run or resume a recipe
    selfimprove report data/runs/demo                              summary table and figure of a run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _data(args) -> int:
    from . import arith

    cfg = arith.ArithConfig(seed=args.seed)
    for p in arith.write_jsonl(arith.generate(cfg), Path(args.out), cfg):
        print(p)
    return 0


def _organism(args) -> int:
    from . import organism, pipeline
    from .config import load_recipe, resolve_recipe

    cfg = load_recipe(resolve_recipe(args.recipe, pipeline.RECIPES), args.set).organism_config()
    path = organism.ensure(cfg, Path(args.organism_root))
    print(f"organism: {path / 'M0'} and {path / 'M1'}")
    return 0


def _run(args) -> int:
    from . import pipeline

    pipeline.run(args.recipe, overrides=args.set, runs_root=args.runs_root, organism_root=args.organism_root,
                 overwrite=args.overwrite, log_output=args.verbose, stop_after=args.stop_after)
    return 0


def _report(args) -> int:
    from . import artifacts, pipeline

    paths = artifacts.RunPaths(args.run_dir)
    pipeline.report(paths, artifacts.Manifest.load(paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfimprove", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data", help="write a task's problems as JSONL")
    p.add_argument("task", choices=["arith"])
    p.add_argument("--out", default="data/problems/arith")
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
    run_p = sub.choices["run"]
    run_p.add_argument("--runs-root", default="data/runs")
    run_p.add_argument("--overwrite", action="store_true", help="delete a run made with another config")
    run_p.add_argument("--verbose", action="store_true", help="stream the notebooks' output")
    run_p.add_argument("--stop-after", default=None, metavar="T/STAGE", help="stop after this stage, e.g. 2/train")
    p = sub.add_parser("report", help="summary table and figure of a run")
    p.add_argument("run_dir")
    p.set_defaults(fn=_report)
    args = parser.parse_args(argv)
    from .config import RecipeError
    from .data import DataError
    from .pipeline import StageError

    try:
        return args.fn(args)
    except (RecipeError, DataError, StageError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
