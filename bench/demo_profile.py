"""Benchmark: where the demo's wall time goes, from a finished run or study (by default `make demo`'s).

    .venv/bin/python bench/demo_profile.py [data/runs/demo] [--out bench/results/demo_profile.json]

For every stage of every run it reads the wall seconds from the manifest and the seconds of model compute
recorded inside the stage (selfimprove/profiling.py: the model's forward calls while sampling, the trainer's
optimizer steps (forward, backward, update) while training, the embedding model while evaluating, the
organism's training loops while preparing; grading runs no model). Overhead is the rest: process and kernel
starts, imports, model loads, tokenising, grading, Parquet I/O. Stages a study took from a sibling run cost
nothing and are counted once. Writes JSON and prints Markdown tables (per stage kind, and the whole run).
The wall time of the command itself (with install) is not in the manifest; give it with --wall-s to see
what the stages leave out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def runs_of(path: Path) -> list[Path]:
    if (path / "manifest.json").exists():
        return [path]
    runs = sorted(p.parent for p in path.glob("*/manifest.json"))
    if not runs:
        raise SystemExit(f"{path}: neither a run (manifest.json) nor a study (runs in subfolders)")
    return runs


def profile(path: Path) -> dict:
    from selfimprove import report

    return report.time_by_stage(runs_of(path))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default="data/runs/demo")
    ap.add_argument("--out", default=str(ROOT / "bench/results/demo_profile.json"))
    ap.add_argument("--wall-s", type=float, default=None, help="wall seconds of the whole command, if measured")
    args = ap.parse_args(argv)
    from selfimprove import artifacts

    result = profile(Path(args.path))
    result.update(path=args.path, command_wall_s=args.wall_s, date=time.strftime("%Y-%m-%d"),
                  machine={"cpu": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count(),
                           "platform": platform.platform()}, versions=artifacts.versions())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from selfimprove import report

    print(report.time_by_stage_table(result))
    if args.wall_s:
        print(f"\ncommand wall {args.wall_s:.1f}s: {args.wall_s - result['wall_s']:.1f}s outside the stages "
              f"(install, imports, reports); model compute is {result['compute_s'] / args.wall_s:.0%} of it")
    print(f"\n{args.out}")
    return result


if __name__ == "__main__":
    main()
